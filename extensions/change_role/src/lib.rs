//! The `change_role` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) offering one tool that
//! switches the assistant among canned roles (a friendly assistant, an English teacher, a
//! storyteller), like the Python server's `change_role` plugin.
//!
//! Its effects speak a confirmation and set the session's system prompt to the new role's; an
//! unknown role only speaks an explanation (the prompt is kept). The host knows nothing of this
//! tool's name.
//!
//! The logic lives in [`roles`]; everything compiles natively, so `cargo test` runs the unit
//! tests on the build machine.

pub mod roles;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool, ToolDefinition};

/// The exported tool.
pub struct ChangeRole;

impl Tool for ChangeRole {
    const NAME: &'static str = roles::NAME;

    fn definition() -> ToolDefinition {
        ToolDefinition {
            name: roles::NAME.to_owned(),
            description: roles::description(),
            parameters_json: roles::parameters_json(),
        }
    }

    fn call(arguments: &Arguments, context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let outcome =
            roles::change(&arguments.to_json(), &context.language).map_err(ExtensionError::InvalidArguments)?;
        let mut effects = vec![Effect::Speak(outcome.spoken)];
        effects.extend(outcome.new_prompt.map(Effect::SetSystemPrompt));
        Ok(effects)
    }
}

xiaozhi_sdk::export_tools!(ChangeRole);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_role_sets_the_prompt_and_an_unknown_one_only_speaks() {
        let context = CallContext { device_id: "d".into(), session_id: "s".into(), language: "en".into() };
        let args = Arguments::parse(r#"{"role":"english_teacher","role_name":"Lily"}"#).expect("args");
        let effects = ChangeRole::call(&args, &context).expect("effects");
        assert!(matches!(&effects[..], [Effect::Speak(_), Effect::SetSystemPrompt(prompt)] if prompt.contains("Lily")));
        let unknown = Arguments::parse(r#"{"role":"pirate"}"#).expect("args");
        let effects = ChangeRole::call(&unknown, &context).expect("effects");
        assert!(matches!(&effects[..], [Effect::Speak(text)] if text.starts_with("Sorry")));
        assert_eq!(ChangeRole::definition().name, "change_role");
    }
}
