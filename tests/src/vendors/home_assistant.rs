//! The Home Assistant mock: the parts of Home Assistant's REST API that the `home_assistant`
//! extension uses, as its developer documentation describes them
//! (<https://developers.home-assistant.io/docs/api/rest/>): every request carries
//! `Authorization: Bearer <long-lived access token>` (else `401`); `GET /api/states/<entity_id>`
//! answers the state object `{entity_id, state, attributes, last_changed, ...}` (`404` for an
//! unknown entity); `POST /api/services/<domain>/<service>` with a JSON body (`entity_id` and
//! the service data) runs the service and answers the list of states that changed. The mock
//! keeps a small house: lights and switches turn on and off, `brightness_pct` sets the
//! brightness (0–255 in the state), `volume_set` sets `volume_level`, and Music Assistant's
//! `play_media` sets `media_title`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{HttpMock, HttpRequest, full_response};

/// A Home Assistant on loopback.
pub struct HomeAssistantMock {
    http: HttpMock,
    states: Arc<Mutex<BTreeMap<String, Value>>>,
    calls: Arc<Mutex<Vec<(String, Value)>>>,
}

impl HomeAssistantMock {
    /// Starts it with `entities` (`entity_id` → state object); requests must carry `token`.
    pub async fn start(token: &str, entities: &[(&str, Value)]) -> anyhow::Result<Self> {
        let states: BTreeMap<String, Value> = entities.iter().map(|(id, s)| ((*id).to_owned(), s.clone())).collect();
        let states = Arc::new(Mutex::new(states));
        let calls = Arc::new(Mutex::new(Vec::new()));
        let (auth, shared, log) = (format!("Bearer {token}"), Arc::clone(&states), Arc::clone(&calls));
        let http = HttpMock::start(move |request| {
            let answer = answer(&auth, &shared, &log, request);
            async move { answer }
        })
        .await?;
        Ok(Self { http, states, calls })
    }

    /// The `base_url` setting.
    pub fn base_url(&self) -> String {
        self.http.url("")
    }

    /// The services called, in order: (`domain/service`, body).
    pub fn calls(&self) -> Vec<(String, Value)> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// An entity's state now.
    pub fn state(&self, entity_id: &str) -> Value {
        self.states.lock().ok().and_then(|s| s.get(entity_id).cloned()).unwrap_or_default()
    }
}

fn answer(
    auth: &str,
    states: &Mutex<BTreeMap<String, Value>>,
    calls: &Mutex<Vec<(String, Value)>>,
    request: HttpRequest,
) -> hyper::Response<super::HttpBody> {
    let json_answer = |status: u16, body: Value| full_response(status, "application/json", body.to_string());
    if request.head.header("authorization") != Some(auth) {
        return json_answer(401, json!({"message": "401: Unauthorized"}));
    }
    let path = request.head.path().to_owned();
    let Ok(mut states) = states.lock() else { return json_answer(500, json!({})) };
    if let Some(entity) = path.strip_prefix("/api/states/") {
        return match (request.head.method.as_str(), states.get(entity)) {
            ("GET", Some(state)) => json_answer(200, state.clone()),
            ("GET", None) => json_answer(404, json!({"message": "Entity not found."})),
            _ => json_answer(405, json!({"message": "Method not allowed"})),
        };
    }
    let Some(service) = path.strip_prefix("/api/services/") else {
        return json_answer(404, json!({"message": "Not found"}));
    };
    if request.head.method != "POST" {
        return json_answer(405, json!({"message": "Method not allowed"}));
    }
    let body = request.json();
    if let Ok(mut log) = calls.lock() {
        log.push((service.to_owned(), body.clone()));
    }
    let entity = body["entity_id"].as_str().unwrap_or_default().to_owned();
    let Some(state) = states.get_mut(&entity) else {
        return json_answer(400, json!({"message": format!("Entity {entity} not found")}));
    };
    match service.split_once('/').map(|(_, s)| s).unwrap_or_default() {
        "turn_on" => {
            state["state"] = json!("on");
            if let Some(pct) = body["brightness_pct"].as_f64() {
                state["attributes"]["brightness"] = json!((pct * 255.0 / 100.0).round() as i64);
            }
        }
        "turn_off" => state["state"] = json!("off"),
        "volume_set" => state["attributes"]["volume_level"] = body["volume_level"].clone(),
        "play_media" => {
            state["state"] = json!("playing");
            state["attributes"]["media_title"] = body["media_id"].clone();
        }
        _ => {}
    }
    json_answer(200, json!([state.clone()]))
}
