//! The `home_assistant` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) with the Python server's
//! three Home Assistant tools: `hass_get_state` (an entity's state for the LLM),
//! `hass_set_state` (turn on/off, brightness, colour, colour temperature, volume, mute, pause,
//! continue) and `hass_play_music` (Music Assistant's `play_media` on a media player). The
//! devices listed in the settings are named in the tools' descriptions, so the LLM knows the
//! entity ids.
//!
//! The requests and the reading of the answers live in [`hass`], which takes the fetch function
//! as an argument, so `cargo test` checks them natively with canned answers.

pub mod hass;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool, ToolDefinition};

fn settings() -> Result<hass::Settings, ExtensionError> {
    hass::Settings::read(xiaozhi_sdk::host::config::get)
}

/// `T`'s definition with the devices named in the settings appended to its description (so the
/// LLM knows the entity ids).
fn with_devices<T: Tool>() -> ToolDefinition {
    let devices = hass::device_list(xiaozhi_sdk::host::config::get("devices").as_deref());
    ToolDefinition {
        name: T::NAME.into(),
        description: format!("{}{devices}", T::DESCRIPTION),
        parameters_json: T::PARAMETERS.into(),
    }
}

/// `hass_get_state`.
pub struct GetState;

impl Tool for GetState {
    const NAME: &'static str = "hass_get_state";
    const DESCRIPTION: &'static str = hass::GET_DESCRIPTION;
    const PARAMETERS: &'static str = hass::GET_PARAMETERS;

    fn definition() -> ToolDefinition {
        with_devices::<Self>()
    }

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let text = hass::get_state(&settings()?, arguments.required("entity_id")?, xiaozhi_sdk::web::send)?;
        Ok(vec![Effect::ReplyToLlm(text)])
    }
}

/// `hass_set_state`.
pub struct SetState;

impl Tool for SetState {
    const NAME: &'static str = "hass_set_state";
    const DESCRIPTION: &'static str = hass::SET_DESCRIPTION;
    const PARAMETERS: &'static str = hass::SET_PARAMETERS;

    fn definition() -> ToolDefinition {
        with_devices::<Self>()
    }

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let entity = arguments.required("entity_id")?;
        let state =
            arguments.get("state").ok_or_else(|| ExtensionError::InvalidArguments("state is missing".into()))?;
        let text = hass::set_state(&settings()?, entity, state, xiaozhi_sdk::web::send)?;
        Ok(vec![Effect::ReplyToLlm(text)])
    }
}

/// `hass_play_music`.
pub struct PlayMusic;

impl Tool for PlayMusic {
    const NAME: &'static str = "hass_play_music";
    const DESCRIPTION: &'static str = hass::PLAY_DESCRIPTION;
    const PARAMETERS: &'static str = hass::PLAY_PARAMETERS;

    fn definition() -> ToolDefinition {
        with_devices::<Self>()
    }

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let entity = arguments.required("entity_id")?;
        let media = arguments.str("media_content_id").unwrap_or("random");
        let said = hass::play_music(&settings()?, entity, media, xiaozhi_sdk::web::send)?;
        Ok(vec![Effect::Speak(said)])
    }
}

xiaozhi_sdk::export_tools!(GetState, SetState, PlayMusic);
