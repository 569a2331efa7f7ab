//! The console's sign-in and JSON API over real HTTP: off by default; a wrong password is refused
//! and repeated tries are slowed (429 with Retry-After, the password not even looked at); the
//! session cookie is HttpOnly and SameSite=Strict; a change without the CSRF token is refused; an
//! agent created and assigned through the API gives the device's next session its prompt (seen at
//! the mock LLM); a device is bound by the activation code its OTA check got, and its history
//! and memory show, search, change and clear; the WebSocket port has no console; signing out
//! ends the session.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};

const DEVICE: &str = "aa:bb:cc:00:0c:01";
const PASSWORD: &str = "s3cret-console";

struct Console {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

impl Console {
    async fn login(http: &reqwest::Client, base: &str, password: &str) -> anyhow::Result<reqwest::Response> {
        Ok(http.post(format!("{base}/api/login")).json(&json!({"password": password})).send().await?)
    }

    fn request(&self, method: reqwest::Method, path: &str, csrf: bool) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base)).header("Cookie", &self.cookie);
        if csrf { builder.header("X-CSRF-Token", &self.csrf) } else { builder }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_off_by_default() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    let base = format!("http://{}/console", server.server.http_addr);
    let response = Console::login(&reqwest::Client::new(), &base, "").await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await?;
    assert!(body["message"].as_str().is_some_and(|m| m.contains("console.password")), "{body}");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_throttled_changes_need_csrf_and_an_agent_reaches_the_device() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server =
        TestServer::start(&mock, &format!("console:\n  password: {PASSWORD}\nactivation:\n  enabled: true\n")).await?;
    let http = reqwest::Client::new();
    let base = format!("http://{}/console", server.server.http_addr);

    // Not on the WebSocket port.
    let ws_port = format!("http://{}/console/api/login", server.server.ws_addr);
    assert_eq!(http.post(ws_port).json(&json!({"password": PASSWORD})).send().await?.status(), StatusCode::NOT_FOUND);

    // A wrong password; the next try right away waits, even with the right password.
    assert_eq!(Console::login(&http, &base, "guess").await?.status(), StatusCode::UNAUTHORIZED);
    let throttled = Console::login(&http, &base, PASSWORD).await?;
    assert_eq!(throttled.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(throttled.headers()["retry-after"], "1");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(Console::login(&http, &base, "guess again").await?.status(), StatusCode::UNAUTHORIZED);
    let throttled = Console::login(&http, &base, PASSWORD).await?;
    assert_eq!(throttled.headers()["retry-after"], "2", "the wait doubles");
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let signed_in = Console::login(&http, &base, PASSWORD).await?;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let set_cookie = signed_in.headers()["set-cookie"].to_str()?.to_owned();
    assert!(set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let csrf = signed_in.json::<Value>().await?["csrf"].as_str().unwrap_or_default().to_owned();
    let console = Console { http: http.clone(), base: base.clone(), cookie, csrf };

    // Without the cookie: 401. Without the CSRF token, a change: 403, and nothing changed.
    assert_eq!(http.get(format!("{base}/api/agents")).send().await?.status(), StatusCode::UNAUTHORIZED);
    let agent = json!({"name": "Captain", "prompt": "You are Captain Console."});
    let forged = console.request(reqwest::Method::PUT, "/api/agents/captain", false).json(&agent).send().await?;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let listed: Value = console.request(reqwest::Method::GET, "/api/agents", false).send().await?.json().await?;
    assert_eq!(listed["agents"], json!([]));

    // With it: the agent is saved, assigned, and the device's next session speaks with its prompt.
    let saved = console.request(reqwest::Method::PUT, "/api/agents/captain", true).json(&agent).send().await?;
    assert_eq!(saved.status(), StatusCode::OK);
    let broken = json!({"llm": "NoSuchLLM"});
    let refused = console.request(reqwest::Method::PUT, "/api/agents/broken", true).json(&broken).send().await?;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(refused.json::<Value>().await?["message"].as_str().is_some_and(|m| m.contains("NoSuchLLM")));
    let assigned = console
        .request(reqwest::Method::PUT, &format!("/api/devices/{DEVICE}/agent"), true)
        .json(&json!({"agent": "captain"}))
        .send()
        .await?;
    assert_eq!(assigned.status(), StatusCode::OK);
    let listed: Value = console.request(reqwest::Method::GET, "/api/agents", false).send().await?.json().await?;
    assert_eq!(listed["agents"][0]["id"], "captain");
    assert_eq!(listed["agents"][0]["devices"], json!([DEVICE]));

    // The device's OTA check shows an activation code; binding it in the console lets it in.
    let ota: Value = http
        .post(server.ota_url())
        .header("Device-Id", DEVICE)
        .header("Client-Id", xiaozhi_server::simulator::DEFAULT_CLIENT_ID)
        .json(&json!({"application": {"version": "2.4.2"}}))
        .send()
        .await?
        .json()
        .await?;
    let code = ota["activation"]["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(code.len(), 6, "{ota}");
    let wrong = console.request(reqwest::Method::POST, "/api/devices/bind", true).json(&json!({"code": "000000"}));
    assert_eq!(wrong.send().await?.status(), StatusCode::NOT_FOUND);
    let bound = console.request(reqwest::Method::POST, "/api/devices/bind", true).json(&json!({"code": code}));
    assert_eq!(bound.send().await?.json::<Value>().await?["device"], DEVICE);

    let mut device = server.device(DEVICE, 1).await?;
    let before = mock.requests().len();
    device.detect("who are you").await?;
    device.collect_reply(Duration::from_secs(20)).await?;
    let system = mock.system_prompts(before).into_iter().next().unwrap_or_default();
    assert!(system.contains("Captain Console"), "{system}");

    // The device list: bound, its agent, online on this instance.
    let devices: Value = console.request(reqwest::Method::GET, "/api/devices", false).send().await?.json().await?;
    let listed = devices["devices"].as_array().and_then(|d| d.iter().find(|d| d["id"] == DEVICE).cloned());
    let listed = listed.ok_or_else(|| anyhow::anyhow!("{DEVICE} is not listed: {devices}"))?;
    assert_eq!((listed["bound"].clone(), listed["agent"].clone()), (json!(true), json!("captain")), "{listed}");
    assert!(listed["online"].is_string(), "{listed}");

    // History: searched, then cleared (once the turn is stored).
    let history =
        |q: &str| console.request(reqwest::Method::GET, &format!("/api/devices/{DEVICE}/history?q={q}"), false);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut found: Value = history("WHO+ARE").send().await?.json().await?;
    while found["history"].as_array().is_none_or(|h| h.is_empty()) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        found = history("WHO+ARE").send().await?.json().await?;
    }
    assert_eq!(found["history"][0]["message"]["content"], "who are you", "{found}");
    let none: Value = history("zebra").send().await?.json().await?;
    assert_eq!(none["history"], json!([]));
    let cleared = console.request(reqwest::Method::DELETE, &format!("/api/devices/{DEVICE}/history"), true);
    assert_eq!(cleared.send().await?.status(), StatusCode::OK);
    let all: Value = history("").send().await?.json().await?;
    assert_eq!(all["history"], json!([]));

    // Memory: set, shown, cleared.
    let memory_path = format!("/api/devices/{DEVICE}/memory");
    let set = console.request(reqwest::Method::PUT, &format!("{memory_path}/mem_local_short/memory"), true);
    assert_eq!(set.json(&json!({"value": "likes tea"})).send().await?.status(), StatusCode::OK);
    let memory: Value = console.request(reqwest::Method::GET, &memory_path, false).send().await?.json().await?;
    assert_eq!(memory["memory"]["mem_local_short"]["memory"], "likes tea");
    let forgot: Value = console.request(reqwest::Method::DELETE, &memory_path, true).send().await?.json().await?;
    assert_eq!(forgot["deleted"], 1);
    let memory: Value = console.request(reqwest::Method::GET, &memory_path, false).send().await?.json().await?;
    assert_eq!(memory["memory"], json!({}));

    // Live figures count the turn; MCP endpoint tokens are issued, listed and revoked.
    let figures: Value = console.request(reqwest::Method::GET, "/api/figures", false).send().await?.json().await?;
    assert!(figures["turns"]["answered"].as_f64().is_some_and(|n| n >= 1.0), "{figures}");
    assert!(figures["first_audio"]["count"].as_f64().is_some_and(|n| n >= 1.0), "{figures}");
    let issued = console.request(reqwest::Method::POST, "/api/mcp-tokens", true).json(&json!({"device": DEVICE}));
    let token = issued.send().await?.json::<Value>().await?["token"].as_str().unwrap_or_default().to_owned();
    assert_eq!(token.len(), 64);
    let tokens: Value = console.request(reqwest::Method::GET, "/api/mcp-tokens", false).send().await?.json().await?;
    assert_eq!(tokens["tokens"][0]["device"], DEVICE, "{tokens}");
    let id = tokens["tokens"][0]["id"].as_str().unwrap_or_default().to_owned();
    let revoked = console.request(reqwest::Method::DELETE, &format!("/api/mcp-tokens/{id}"), true).send().await?;
    assert_eq!(revoked.status(), StatusCode::OK);
    let extensions: Value =
        console.request(reqwest::Method::GET, "/api/extensions", false).send().await?.json().await?;
    assert!(extensions["extensions"].as_array().is_some_and(|e| !e.is_empty()), "{extensions}");

    // Firmware: uploaded under a name OTA understands, listed, offered to an older device, deleted.
    let image = vec![0xE9u8; 4096];
    let upload = console.request(reqwest::Method::PUT, "/api/firmware/bread-compact-wifi_9.9.9.bin", true);
    assert_eq!(upload.body(image.clone()).send().await?.status(), StatusCode::OK);
    let badly_named = console.request(reqwest::Method::PUT, "/api/firmware/evil.sh", true).body(image.clone());
    assert_eq!(badly_named.send().await?.status(), StatusCode::BAD_REQUEST);
    let images: Value = console.request(reqwest::Method::GET, "/api/firmware", false).send().await?.json().await?;
    assert_eq!(
        images["images"],
        json!([{"name": "bread-compact-wifi_9.9.9.bin", "model": "bread-compact-wifi", "version": "9.9.9", "bytes": 4096}])
    );
    let download =
        http.get(format!("http://{}/xiaozhi/ota/download/bread-compact-wifi_9.9.9.bin", server.server.http_addr));
    assert_eq!(download.send().await?.bytes().await?.len(), 4096);
    let deleted = console.request(reqwest::Method::DELETE, "/api/firmware/bread-compact-wifi_9.9.9.bin", true);
    assert_eq!(deleted.send().await?.status(), StatusCode::OK);

    // Signed out, the cookie opens nothing.
    let out = console.request(reqwest::Method::POST, "/api/logout", true).send().await?;
    assert_eq!(out.status(), StatusCode::OK);
    let after = console.request(reqwest::Method::GET, "/api/agents", false).send().await?;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);
    server.server.shutdown().await;
    Ok(())
}
