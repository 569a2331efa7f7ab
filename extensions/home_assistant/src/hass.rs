//! Home Assistant's REST API (`GET /api/states/<entity_id>`, `POST /api/services/<domain>/<service>`
//! with `Authorization: Bearer <long-lived token>`), as the Python server's hass_* plugins use it.

use serde_json::{Map, Value, json};
use xiaozhi_sdk::ExtensionError;
use xiaozhi_sdk::web::{self, Request, Response};

/// What `hass_get_state` does, for the LLM.
pub const GET_DESCRIPTION: &str = "获取homeassistant里设备的状态，包括查询灯光亮度、颜色、色温，媒体播放器的音量，设备的暂停、继续操作。\
Get the state of a Home Assistant device (light brightness, colour, colour temperature, media player volume, paused or playing).";
/// Its arguments.
pub const GET_PARAMETERS: &str = r#"{"type":"object","properties":{"entity_id":{"type":"string","description":"需要操作的设备id，homeassistant里的entity_id"}},"required":["entity_id"]}"#;
/// What `hass_set_state` does, for the LLM.
pub const SET_DESCRIPTION: &str = "设置homeassistant里设备的状态，包括开、关，调整灯光亮度、颜色、色温，调整播放器的音量，设备的暂停、继续、静音操作。\
Set the state of a Home Assistant device: on, off, brightness, colour, colour temperature, volume, mute, pause, continue.";
/// Its arguments.
pub const SET_PARAMETERS: &str = r#"{"type":"object","properties":{"state":{"type":"object","properties":{"type":{"type":"string","description":"需要操作的动作: turn_on, turn_off, brightness_up, brightness_down, brightness_value, set_color, set_kelvin, volume_up, volume_down, volume_set, volume_mute, pause, continue"},"input":{"type":"integer","description":"只有在设置音量、亮度（1-100）或色温（K）时才需要"},"is_muted":{"type":"string","description":"静音时为 true，取消静音为 false"},"rgb_color":{"type":"array","items":{"type":"integer"},"description":"set_color 时的 [r, g, b]"}},"required":["type"]},"entity_id":{"type":"string","description":"需要操作的设备id，homeassistant里的entity_id"}},"required":["state","entity_id"]}"#;
/// What `hass_play_music` does, for the LLM.
pub const PLAY_DESCRIPTION: &str = "用户想听音乐、有声书的时候使用，在房间的媒体播放器（media_player）里播放对应音频。\
Play music or an audiobook on a Home Assistant media player (through Music Assistant).";
/// Its arguments.
pub const PLAY_PARAMETERS: &str = r#"{"type":"object","properties":{"media_content_id":{"type":"string","description":"可以是音乐或有声书的专辑名称、歌曲名、演唱者，如果未指定就填random"},"entity_id":{"type":"string","description":"需要操作的音箱的设备id，homeassistant里的entity_id，media_player开头"}},"required":["media_content_id","entity_id"]}"#;

/// The settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Home Assistant's address.
    pub base_url: String,
    /// The long-lived access token.
    pub api_key: String,
}

impl Settings {
    /// Reads the settings through `get` (the host's `config`).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Self, ExtensionError> {
        let value = |key: &str| get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let base_url = value("base_url").ok_or_else(|| {
            ExtensionError::Denied(
                "no base_url is set in plugins.home_assistant (or extensions.grants.home_assistant.config)".into(),
            )
        })?;
        let api_key = value("api_key").ok_or_else(|| {
            ExtensionError::Denied("no api_key (long-lived access token) is set in plugins.home_assistant".into())
        })?;
        Ok(Self { base_url, api_key })
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.api_key)
    }
}

/// The device list for the descriptions: the `devices` setting (a JSON list of
/// "location,name,entity_id", or such lines separated by `;` or new lines) as one device per
/// line under the Python server's header; empty when there are none.
pub fn device_list(setting: Option<&str>) -> String {
    let Some(text) = setting.map(str::trim).filter(|t| !t.is_empty()) else { return String::new() };
    let items: Vec<String> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => text.split([';', '\n']).map(str::to_owned).collect(),
    };
    let items: Vec<&str> = items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()).collect();
    if items.is_empty() {
        return String::new();
    }
    format!("\n下面是我家智能设备列表（位置，设备名，entity_id），可以通过homeassistant控制\n{}", items.join("\n"))
}

/// The entity's domain (`light` of `light.kitchen`); an id without one is refused.
fn domain(entity_id: &str) -> Result<&str, ExtensionError> {
    match entity_id.split_once('.') {
        Some((domain, rest)) if !domain.is_empty() && !rest.is_empty() => Ok(domain),
        _ => Err(ExtensionError::InvalidArguments(format!("{entity_id:?} is not an entity id (domain.name)"))),
    }
}

/// The request for an entity's state.
pub fn state_request(settings: &Settings, entity_id: &str) -> Request {
    let auth = settings.auth();
    web::get(
        &web::join(&settings.base_url, &format!("/api/states/{}", web::encode(entity_id))),
        &[("Authorization", auth.as_str())],
    )
}

/// An entity's state as the Python plugin words it: `设备状态:on 亮度是:128 …`.
pub fn describe_state(state: &Value) -> String {
    let mut text = format!("设备状态:{} ", state["state"].as_str().unwrap_or("unknown"));
    let attributes = &state["attributes"];
    for (key, label) in [
        ("media_title", "正在播放的是"),
        ("volume_level", "音量是"),
        ("color_temp_kelvin", "色温是"),
        ("rgb_color", "rgb颜色是"),
        ("brightness", "亮度是"),
    ] {
        match &attributes[key] {
            Value::Null => {}
            Value::String(s) => text.push_str(&format!("{label}:{s} ")),
            other => text.push_str(&format!("{label}:{other} ")),
        }
    }
    text.trim_end().to_owned()
}

/// `hass_get_state`: the state of `entity_id`.
pub fn get_state(
    settings: &Settings,
    entity_id: &str,
    fetch: impl Fn(&Request) -> Result<Response, ExtensionError>,
) -> Result<String, ExtensionError> {
    domain(entity_id)?;
    let response = fetch(&state_request(settings, entity_id))?;
    if response.status == 404 {
        return Ok(format!("Home Assistant has no entity {entity_id}"));
    }
    Ok(describe_state(&web::json(&response)?))
}

/// What a `state.type` does: the service called, the extra body, and what is said.
pub fn service_call(domain: &str, state: &Value) -> Result<(String, Map<String, Value>, String), ExtensionError> {
    let kind = state["type"].as_str().unwrap_or_default();
    let input = state["input"].as_i64().or_else(|| state["input"].as_str().and_then(|s| s.trim().parse().ok()));
    let mut body = Map::new();
    let need_input = || input.ok_or_else(|| ExtensionError::InvalidArguments(format!("{kind} needs state.input")));
    let (service, said) = match kind {
        "turn_on" => (
            match domain {
                "cover" => "open_cover",
                "vacuum" => "start",
                _ => "turn_on",
            },
            "设备已打开".to_owned(),
        ),
        "turn_off" => (
            match domain {
                "cover" => "close_cover",
                "vacuum" => "stop",
                _ => "turn_off",
            },
            "设备已关闭".to_owned(),
        ),
        "brightness_up" => {
            body.insert("brightness_step_pct".into(), json!(10));
            ("turn_on", "灯光已调亮".to_owned())
        }
        "brightness_down" => {
            body.insert("brightness_step_pct".into(), json!(-10));
            ("turn_on", "灯光已调暗".to_owned())
        }
        "brightness_value" => {
            let value = need_input()?;
            body.insert("brightness_pct".into(), json!(value));
            ("turn_on", format!("亮度已调整到{value}"))
        }
        "set_color" => {
            let rgb = state["rgb_color"].clone();
            if !rgb.as_array().is_some_and(|c| c.len() == 3 && c.iter().all(Value::is_i64)) {
                return Err(ExtensionError::InvalidArguments("set_color needs state.rgb_color [r, g, b]".into()));
            }
            body.insert("rgb_color".into(), rgb.clone());
            ("turn_on", format!("颜色已调整到{rgb}"))
        }
        "set_kelvin" => {
            let value = need_input()?;
            body.insert("kelvin".into(), json!(value));
            ("turn_on", format!("色温已调整到{value}K"))
        }
        "volume_up" => ("volume_up", "音量已调大".to_owned()),
        "volume_down" => ("volume_down", "音量已调小".to_owned()),
        "volume_set" => {
            let value = need_input()?;
            let level = if value >= 1 { value as f64 / 100.0 } else { value as f64 };
            body.insert("volume_level".into(), json!(level));
            ("volume_set", format!("音量已调整到{value}"))
        }
        "volume_mute" => {
            let muted = match &state["is_muted"] {
                Value::Bool(b) => *b,
                Value::String(s) => s.trim().eq_ignore_ascii_case("true"),
                _ => true,
            };
            body.insert("is_volume_muted".into(), json!(muted));
            ("volume_mute", if muted { "设备已静音" } else { "设备已取消静音" }.to_owned())
        }
        "pause" => (
            match domain {
                "media_player" => "media_pause",
                "cover" => "stop_cover",
                _ => "pause",
            },
            "设备已暂停".to_owned(),
        ),
        "continue" => (
            match domain {
                "media_player" => "media_play",
                "vacuum" => "start",
                _ => "turn_on",
            },
            "设备已继续".to_owned(),
        ),
        other => return Err(ExtensionError::InvalidArguments(format!("{domain} {other}功能尚未支持"))),
    };
    Ok((service.to_owned(), body, said))
}

/// `hass_set_state`: calls the service for `state` on `entity_id` and says what it did.
pub fn set_state(
    settings: &Settings,
    entity_id: &str,
    state: &Value,
    fetch: impl Fn(&Request) -> Result<Response, ExtensionError>,
) -> Result<String, ExtensionError> {
    let domain = domain(entity_id)?;
    let (service, mut body, said) = service_call(domain, state)?;
    body.insert("entity_id".into(), json!(entity_id));
    let auth = settings.auth();
    let request = web::post_json(
        &web::join(&settings.base_url, &format!("/api/services/{domain}/{service}")),
        &[("Authorization", auth.as_str())],
        &Value::Object(body),
    );
    let response = fetch(&request)?;
    if !(200..300).contains(&response.status) {
        return Ok(format!("设置失败，错误码: {}", response.status));
    }
    Ok(said)
}

/// `hass_play_music`: Music Assistant's `play_media` on `entity_id`, and what is said.
pub fn play_music(
    settings: &Settings,
    entity_id: &str,
    media: &str,
    fetch: impl Fn(&Request) -> Result<Response, ExtensionError>,
) -> Result<String, ExtensionError> {
    domain(entity_id)?;
    let auth = settings.auth();
    let request = web::post_json(
        &web::join(&settings.base_url, "/api/services/music_assistant/play_media"),
        &[("Authorization", auth.as_str())],
        &json!({"entity_id": entity_id, "media_id": media}),
    );
    let response = fetch(&request)?;
    if !(200..300).contains(&response.status) {
        return Ok(format!("音乐播放失败，错误码: {}", response.status));
    }
    Ok(format!("正在播放{media}的音乐"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn settings() -> Settings {
        Settings { base_url: "http://ha.local:8123/".into(), api_key: "tok".into() }
    }

    fn ok(body: Value) -> Response {
        Response { status: 200, headers: vec![], body: body.to_string().into_bytes() }
    }

    #[test]
    fn the_state_is_read_with_the_token_and_worded_like_the_plugin() {
        let seen = RefCell::new(Vec::new());
        let text = get_state(&settings(), "light.kitchen", |r| {
            seen.borrow_mut().push((r.method.clone(), r.url.clone(), r.headers.clone()));
            Ok(ok(json!({"entity_id": "light.kitchen", "state": "on", "attributes": {"brightness": 128, "rgb_color": [255, 0, 0]}})))
        })
        .expect("state");
        assert_eq!(text, "设备状态:on rgb颜色是:[255,0,0] 亮度是:128");
        let seen = seen.borrow();
        assert_eq!(seen[0].1, "http://ha.local:8123/api/states/light.kitchen");
        assert!(seen[0].2.iter().any(|(k, v)| k == "Authorization" && v == "Bearer tok"));
        assert!(get_state(&settings(), "kitchen", |_| Ok(ok(json!({})))).is_err(), "no domain");
    }

    #[test]
    fn each_state_type_calls_its_service() {
        let call = |entity: &str, state: Value| {
            let seen = RefCell::new(None);
            let said = set_state(&settings(), entity, &state, |r| {
                *seen.borrow_mut() = Some((
                    r.url.clone(),
                    serde_json::from_slice::<Value>(r.body.as_deref().unwrap_or_default()).unwrap_or_default(),
                ));
                Ok(ok(json!([])))
            });
            (said, seen.into_inner())
        };
        let (said, seen) = call("switch.lamp", json!({"type": "turn_on"}));
        assert_eq!(said.expect("said"), "设备已打开");
        let (url, body) = seen.expect("request");
        assert_eq!(url, "http://ha.local:8123/api/services/switch/turn_on");
        assert_eq!(body, json!({"entity_id": "switch.lamp"}));
        let (_, seen) = call("cover.blind", json!({"type": "turn_off"}));
        assert!(seen.expect("request").0.ends_with("/api/services/cover/close_cover"));
        let (said, seen) = call("light.a", json!({"type": "brightness_value", "input": 40}));
        assert_eq!(said.expect("said"), "亮度已调整到40");
        assert_eq!(seen.expect("request").1["brightness_pct"], 40);
        let (_, seen) = call("media_player.tv", json!({"type": "volume_set", "input": 30}));
        assert_eq!(seen.expect("request").1["volume_level"], 0.3);
        let (_, seen) = call("media_player.tv", json!({"type": "pause"}));
        assert!(seen.expect("request").0.ends_with("/media_player/media_pause"));
        let (said, seen) = call("light.a", json!({"type": "dance"}));
        assert!(said.is_err() && seen.is_none());
        let (said, _) = call("light.a", json!({"type": "brightness_value"}));
        assert!(matches!(said, Err(ExtensionError::InvalidArguments(m)) if m.contains("needs state.input")));
    }

    #[test]
    fn music_and_devices() {
        let said = play_music(&settings(), "media_player.living", "周杰伦", |r| {
            assert!(r.url.ends_with("/api/services/music_assistant/play_media"));
            Ok(ok(json!([])))
        })
        .expect("said");
        assert_eq!(said, "正在播放周杰伦的音乐");
        let failed = play_music(&settings(), "media_player.living", "x", |_| {
            Ok(Response { status: 500, headers: vec![], body: vec![] })
        })
        .expect("said");
        assert_eq!(failed, "音乐播放失败，错误码: 500");
        let list = device_list(Some(r#"["客厅,玩具灯,switch.toy", "卧室,台灯,light.desk"]"#));
        assert!(list.ends_with("客厅,玩具灯,switch.toy\n卧室,台灯,light.desk"), "{list}");
        assert_eq!(device_list(None), "");
        assert!(matches!(Settings::read(|_| None), Err(ExtensionError::Denied(_))));
    }
}
