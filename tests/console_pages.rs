//! The console's pages in real headless Chromium (Debian `chromium` + `chromium-driver`, over
//! WebDriver): signing in (a wrong password refused, repeated ones slowed), binding a device by
//! the code its OTA check got, creating an agent with another prompt and voice and giving it to
//! the device (its next turn carries both, seen at the mock LLM and TTS), history searched and
//! cleared, memory edited and cleared, the extension, token, firmware and figure pages; a POST
//! without the CSRF token refused. And the talk page: Chromium's fake microphone speaks a question
//! from a WAV file, the page sends it as WebCodecs Opus over the device protocol, shows the `stt`
//! text and plays the reply, whose received length matches what a simulated device gets.
//!
//! Screenshots of every page are written to `target/console-screenshots/`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use xiaozhi_e2e::browser::Browser;
use xiaozhi_e2e::harness::{TestServer, repo_root};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::speech::{DEVICE_RATE, speech_16k, with_silence, write_wav};

const DEVICE: &str = "aa:bb:cc:00:0d:01";
const PASSWORD: &str = "pages-s3cret";

fn shots() -> std::path::PathBuf {
    repo_root().join("target/console-screenshots")
}

/// The console session cookie Chromium holds (`name=value`).
async fn session_cookie(browser: &Browser) -> anyhow::Result<String> {
    let cookies = browser.client.get_all_cookies().await?;
    let cookie = cookies
        .iter()
        .find(|c| c.name() == "xz_console")
        .ok_or_else(|| anyhow::anyhow!("no console cookie in the browser"))?;
    assert_eq!(cookie.http_only(), Some(true), "the session cookie is HttpOnly");
    Ok(format!("{}={}", cookie.name(), cookie.value()))
}

/// Signs in through the page: wrong passwords first (refused, then slowed), then the right one.
async fn sign_in_slowly(browser: &Browser, base: &str) -> anyhow::Result<()> {
    browser.client.goto(&format!("{base}/")).await?;
    browser.element("#login:not([hidden])").await?;
    browser.fill("#password", "guess").await?;
    browser.click("#login-button").await?;
    browser.wait_text("#notice", |t| t.contains("wrong password")).await?;
    browser.fill("#password", PASSWORD).await?;
    browser.click("#login-button").await?;
    browser.wait_text("#notice", |t| t.contains("Too many wrong passwords") && t.contains("1 s")).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    browser.fill("#password", "guess again").await?;
    browser.click("#login-button").await?;
    browser.wait_text("#notice", |t| t.contains("wrong password")).await?;
    browser.fill("#password", PASSWORD).await?;
    browser.click("#login-button").await?;
    browser.wait_text("#notice", |t| t.contains("2 s")).await?;
    browser.screenshot(&shots(), "01-sign-in-slowed").await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    sign_in(browser).await
}

async fn sign_in(browser: &Browser) -> anyhow::Result<()> {
    browser.fill("#password", PASSWORD).await?;
    browser.click("#login-button").await?;
    browser.element("#page[data-page=devices]").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_pages_bind_assign_show_and_clear() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server =
        TestServer::start(&mock, &format!("console:\n  password: {PASSWORD}\nactivation:\n  enabled: true\n")).await?;
    let base = format!("http://{}/console", server.server.http_addr);
    let http = reqwest::Client::new();
    let browser = Browser::start(&[]).await?;

    sign_in_slowly(&browser, &base).await?;

    // A change without the session's CSRF token is refused, even with the browser's cookie.
    let cookie = session_cookie(&browser).await?;
    let forged = http.post(format!("{base}/api/devices/bind")).header("Cookie", &cookie).json(&json!({"code": "1"}));
    assert_eq!(forged.send().await?.status(), StatusCode::FORBIDDEN);

    // The device checks in and speaks its code; it is bound on the devices page.
    let ota: Value = http
        .post(server.ota_url())
        .header("Device-Id", DEVICE)
        .header("Client-Id", xiaozhi_server::simulator::DEFAULT_CLIENT_ID)
        .json(&json!({"application": {"version": "2.4.2"}, "board": {"type": "bread-compact-wifi"}}))
        .send()
        .await?
        .json()
        .await?;
    let code = ota["activation"]["code"].as_str().unwrap_or_default().to_owned();
    assert_eq!(code.len(), 6, "{ota}");
    browser.client.refresh().await?;
    let row = format!("tr[data-device=\"{DEVICE}\"]");
    browser.wait_text(&row, |t| t.contains("bread-compact-wifi") && t.contains("2.4.2") && t.contains("no")).await?;
    browser.fill("#bind-code", &code).await?;
    browser.click("#bind-form button").await?;
    browser.wait_text("#notice", |t| t.contains(&format!("Bound the device showing code {code}"))).await?;
    browser.wait_text(&format!("{row} td:nth-child(6)"), |t| t == "yes").await?;

    // An agent with another prompt and voice, created on the agents page.
    browser.click("nav a[data-page=agents]").await?;
    browser.fill("#agent-form input[name=id]", "pirate").await?;
    browser.fill("#agent-form input[name=name]", "Pirate Pete").await?;
    browser.fill("#agent-form input[name=voice]", "shimmer").await?;
    browser.fill("#agent-form textarea[name=prompt]", "You are Pirate Pete of the console.").await?;
    browser.click("#agent-form button[type=submit]").await?;
    browser.wait_text("tr[data-agent=pirate]", |t| t.contains("Pirate Pete") && t.contains("shimmer")).await?;
    // One naming a missing LLM entry is refused with the reason.
    browser.fill("#agent-form input[name=id]", "broken").await?;
    browser.fill("#agent-form input[name=llm]", "NoSuchLLM").await?;
    browser.click("#agent-form button[type=submit]").await?;
    browser.wait_text("#notice.error", |t| t.contains("NoSuchLLM")).await?;
    browser.click("nav a[data-page=agents]").await?;
    browser.screenshot(&shots(), "03-agents").await?;

    // Given to the device on the devices page.
    browser.click("nav a[data-page=devices]").await?;
    browser.element(&format!("select[data-device=\"{DEVICE}\"]")).await?.select_by_value("pirate").await?;
    browser.wait_text("#notice", |t| t.contains("now has agent pirate")).await?;
    browser.screenshot(&shots(), "02-devices").await?;

    // The device's next turn carries the agent's prompt and voice.
    let mut device = server.device(DEVICE, 1).await?;
    let before = mock.requests().len();
    device.detect("who are you").await?;
    device.collect_reply(Duration::from_secs(20)).await?;
    let requests = mock.requests().split_off(before);
    let system = mock.system_prompts(before).into_iter().next().unwrap_or_default();
    assert!(system.contains("Pirate Pete of the console"), "{system}");
    let voice = requests.iter().find(|r| r.path.ends_with("/audio/speech")).map(|r| r.body["voice"].clone());
    assert_eq!(voice, Some(json!("shimmer")));

    // History: shown, searched, cleared (once the turn is stored).
    let history = format!("{base}/#history/{}", urlencode(DEVICE));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        browser.client.goto(&history).await?;
        let text = browser.wait_text("#page[data-page=history]", |_| true).await?;
        if text.contains("who are you") || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.wait_text("#page", |t| t.contains("who are you") && t.contains("Hello! How can I help you today?")).await?;
    browser.screenshot(&shots(), "04-history").await?;
    browser.fill("#history-search", "zebra").await?;
    browser.click("#page form button[type=submit]").await?;
    browser.wait_text("#page", |t| t.contains("0 matching") && !t.contains("who are you")).await?;
    browser.fill("#history-search", "WHO ARE").await?;
    browser.click("#page form button[type=submit]").await?;
    browser.wait_text("#page", |t| t.contains("1 matching") && t.contains("who are you")).await?;
    browser.click("#history-clear").await?;
    browser.accept().await?;
    browser.wait_text("#notice", |t| t.contains("Cleared the history")).await?;
    browser.wait_text("#page", |t| t.contains("Nothing yet.")).await?;

    // Memory: what an extension stored, edited on the page, then cleared.
    let csrf: Value = http.get(format!("{base}/api/session")).header("Cookie", &cookie).send().await?.json().await?;
    let csrf = csrf["csrf"].as_str().unwrap_or_default().to_owned();
    let memory_api = format!("{base}/api/devices/{DEVICE}/memory");
    let seeded = http
        .put(format!("{memory_api}/mem_local_short/memory"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .json(&json!({"value": "likes tea"}))
        .send()
        .await?;
    assert_eq!(seeded.status(), StatusCode::OK);
    browser.client.goto(&format!("{base}/#memory/{}", urlencode(DEVICE))).await?;
    let field = browser.element("textarea[data-key=\"mem_local_short/memory\"]").await?;
    assert_eq!(field.prop("value").await?.as_deref(), Some("likes tea"));
    field.clear().await?;
    field.send_keys("likes green tea").await?;
    browser.click("#page tbody button").await?;
    browser.wait_text("#notice", |t| t.contains("Saved memory")).await?;
    let memory: Value = http.get(&memory_api).header("Cookie", &cookie).send().await?.json().await?;
    assert_eq!(memory["memory"]["mem_local_short"]["memory"], "likes green tea");
    browser.screenshot(&shots(), "05-memory").await?;
    browser.click("#memory-clear").await?;
    browser.accept().await?;
    browser.wait_text("#page", |t| t.contains("Nothing yet.")).await?;
    let memory: Value = http.get(&memory_api).header("Cookie", &cookie).send().await?.json().await?;
    assert_eq!(memory["memory"], json!({}));

    // Extensions: what serves, with its grant; reload.
    browser.click("nav a[data-page=extensions]").await?;
    browser.wait_text("#page tbody", |t| t.contains("MiB")).await?;
    browser.click("#page .bar button").await?;
    browser.wait_text("#notice", |t| t.contains("Reloaded")).await?;
    browser.screenshot(&shots(), "06-extensions").await?;

    // MCP endpoint tokens: one issued for the device, shown once, listed.
    browser.click("nav a[data-page=mcp-tokens]").await?;
    browser.fill("#token-device", DEVICE).await?;
    browser.click("#page form button").await?;
    let shown = browser.wait_text("#new-token", |t| t.contains("shown once")).await?;
    browser.wait_text("#page tbody", |t| t.contains(DEVICE)).await?;
    browser.screenshot(&shots(), "07-mcp-tokens").await?;
    let (first, second) = shown.split_once('\n').unwrap_or_default();
    let token = first.rsplit(' ').next().unwrap_or_default();
    assert_eq!(token.len(), 64, "{shown}");
    let endpoint = format!("ws://127.0.0.1:{}/mcp_endpoint/mcp/?token={token}", server.server.ws_addr.port());
    assert_eq!(second, endpoint, "the address a tool server connects to");

    // Firmware: an image uploaded from a file, listed, offered for download.
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("bread-compact-wifi_9.9.9.bin");
    std::fs::write(&image, vec![0xE9u8; 8192])?;
    browser.click("nav a[data-page=firmware]").await?;
    browser.element("#firmware-file").await?.send_keys(&image.to_string_lossy()).await?;
    browser.click("#page form button").await?;
    browser.wait_text("#page tbody", |t| t.contains("bread-compact-wifi_9.9.9.bin") && t.contains("9.9.9")).await?;
    browser.screenshot(&shots(), "08-firmware").await?;
    let download =
        http.get(format!("http://{}/xiaozhi/ota/download/bread-compact-wifi_9.9.9.bin", server.server.http_addr));
    assert_eq!(download.send().await?.bytes().await?.len(), 8192);

    // Live figures count the turn.
    browser.click("nav a[data-page=figures]").await?;
    browser.wait_text("#figure-first-audio-count", |t| t.parse::<f64>().is_ok_and(|n| n >= 1.0)).await?;
    browser.wait_text("#figure-sessions", |t| t == "1").await?;
    browser.screenshot(&shots(), "09-figures").await?;

    // Signing out ends the session: the cookie opens nothing any more.
    browser.click("#logout").await?;
    browser.element("#login:not([hidden])").await?;
    let after = http.get(format!("{base}/api/devices")).header("Cookie", &cookie).send().await?;
    assert_eq!(after.status(), StatusCode::UNAUTHORIZED);

    drop(device);
    browser.close().await?;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_pages_are_off_by_default() -> anyhow::Result<()> {
    let mock = MockOpenAi::start(MockScript::default()).await?;
    let server = TestServer::start(&mock, "").await?;
    let browser = Browser::start(&[]).await?;
    browser.client.goto(&format!("http://{}/console/", server.server.http_addr)).await?;
    browser.wait_text("body", |t| t.contains("console.password")).await?;
    browser.close().await?;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_talk_page_speaks_a_question_and_plays_the_reply() -> anyhow::Result<()> {
    let question = "What can the console do?";
    let mock =
        MockOpenAi::start(MockScript::default().transcript(question).reply("The console talks like a device.")).await?;
    // Device tokens on: the talk page connects with the one the console issues it.
    let server = TestServer::start_with_server_yaml(
        &mock,
        "  auth:\n    enabled: true\n    allowed_devices: [\"aa:bb:cc:00:0d:02\"]\n",
        &format!("console:\n  password: {PASSWORD}\n"),
    )
    .await?;
    let base = format!("http://{}/console", server.server.http_addr);

    // What a simulated device receives for the same reply.
    let mut sim = server.device("aa:bb:cc:00:0d:02", 1).await?;
    sim.detect(question).await?;
    let expected_ms = sim.collect_reply(Duration::from_secs(20)).await?.audio_ms();
    drop(sim);
    assert!(expected_ms > 1000, "{expected_ms}");

    // The fake microphone says the question once, then silence.
    let dir = tempfile::tempdir()?;
    let wav = dir.path().join("question.wav");
    write_wav(&wav, &with_silence(&speech_16k(question)?, 1000, 3000), DEVICE_RATE)?;
    let browser = Browser::start(&[
        "--use-fake-device-for-media-stream".into(),
        "--use-fake-ui-for-media-stream".into(),
        format!("--use-file-for-fake-audio-capture={}%noloop", wav.display()),
    ])
    .await?;
    browser.client.goto(&format!("{base}/")).await?;
    browser.element("#login:not([hidden])").await?;
    sign_in(&browser).await?;
    browser.client.goto(&format!("{base}/talk.html")).await?;
    browser.element("#agent option").await?;
    browser.click("#connect").await?;
    browser.wait_text("#state", |t| t == "connected").await?;
    browser.click("#talk").await?;
    browser.wait_text("#chat p[data-role=user]", |t| t.contains(question)).await?;
    browser.wait_text("#chat p[data-role=assistant]", |t| t.contains("talks like a device")).await?;
    browser.wait_text("#state", |t| t == "listening").await?;
    let received: u64 = browser.wait_text("#received-ms", |t| t != "0").await?.parse()?;
    assert!(received.abs_diff(expected_ms) <= 60, "the page received {received} ms, a device {expected_ms} ms");
    // Played to the end (the last buffers end shortly after `tts stop`).
    browser.wait_text("#played-ms", |t| t.parse::<u64>().is_ok_and(|played| played + 60 >= received)).await?;
    let sent: u64 = browser.wait_text("#sent-frames", |t| t != "0").await?.parse()?;
    assert!(sent >= 20, "{sent} Opus frames sent");
    eprintln!(
        "talk page: {sent} Opus frames sent; reply {received} ms received and played (a device: {expected_ms} ms)"
    );
    browser.wait_text("#log", |t| t.contains("\"type\":\"stt\"") && t.contains("\"type\":\"hello\"")).await?;
    browser.screenshot(&shots(), "10-talk").await?;
    browser.close().await?;
    server.server.shutdown().await;
    Ok(())
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
