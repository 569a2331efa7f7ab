//! The `handle_exit_intent` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) offering one tool the
//! LLM calls when the user wants to end the conversation. Its effects say the goodbye, keep a
//! note in the dialogue and end the conversation: the host knows nothing of this tool's name.
//!
//! The logic lives in [`tool`]; everything compiles natively, so `cargo test` runs the unit
//! tests on the build machine.

pub mod tool;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool};

/// The exported tool.
pub struct HandleExitIntent;

impl Tool for HandleExitIntent {
    const NAME: &'static str = tool::NAME;
    const DESCRIPTION: &'static str = tool::DESCRIPTION;
    const PARAMETERS: &'static str = tool::PARAMETERS_JSON;

    fn call(arguments: &Arguments, context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let goodbye =
            tool::goodbye(&arguments.to_json(), &context.language).map_err(ExtensionError::InvalidArguments)?;
        Ok(vec![Effect::Speak(goodbye), Effect::Note(tool::RESULT.to_owned()), Effect::EndConversation])
    }
}

xiaozhi_sdk::export_tools!(HandleExitIntent);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_effects_say_goodbye_and_end_the_conversation() {
        let context = CallContext { device_id: "d".into(), session_id: "s".into(), language: "en".into() };
        let args = Arguments::parse(r#"{"say_goodbye":"Bye now"}"#).expect("args");
        assert_eq!(
            HandleExitIntent::call(&args, &context).expect("effects"),
            vec![Effect::Speak("Bye now".into()), Effect::Note(tool::RESULT.into()), Effect::EndConversation]
        );
        let bad = Arguments::parse(r#"{"say_goodbye":42}"#).expect("args");
        assert!(matches!(HandleExitIntent::call(&bad, &context), Err(ExtensionError::InvalidArguments(_))));
    }
}
