//! End-to-end tests of the iFlytek (Xunfei) providers, `ASR xunfei_stream` (large-model
//! dictation) and `TTS xunfei_stream` (super-natural synthesis), through the device simulator
//! against the protocol mocks of `xiaozhi_e2e::vendors::xunfei` (signed URLs checked, the
//! platform's framing, error frames, paced audio).

use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, REPLY_WAIT, providers_yaml, typed_turn};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_e2e::vendors::Timing;
use xiaozhi_e2e::vendors::xunfei::{Credentials, XunfeiIatMock, XunfeiTtsMock, signed_url};
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::{Reply, SimDevice};

const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];
const QUESTION: &str = "what is the weather like in Beijing today";
const TRANSCRIPT: &str = "What is the weather like in Beijing today?";

/// A server with `entries` under test (the rest on the OpenAI mock) and the error response.
async fn server(mock: &MockOpenAi, entries: &[Entry]) -> anyhow::Result<TestServer> {
    TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(mock, entries))).await
}

fn asr_entry(iat: &XunfeiIatMock, creds: &Credentials) -> Entry {
    Entry::asr(format!(
        "type: xunfei_stream\napi_url: \"{}\"\n{}domain: slm\nlanguage: zh_cn\naccent: mandarin\ndwa: wpgs\noutput_dir: tmp/\n",
        iat.url(),
        creds.yaml()
    ))
}

fn tts_entry(tts: &XunfeiTtsMock, creds: &Credentials) -> Entry {
    Entry::tts(format!(
        "type: xunfei_stream\napi_url: \"{}\"\n{}voice: x5_lingxiaoxuan_flow\noutput_dir: tmp/\n",
        tts.url(),
        creds.yaml()
    ))
}

/// Whether a chat request's last message was `text` from the user.
fn asked_the_llm(mock: &MockOpenAi, text: &str) -> bool {
    mock.requests().iter().any(|r| {
        let last = r.body["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
        last["role"] == "user" && last["content"] == text
    })
}

/// The device says `question` (real time, then 1.5 s of silence) and collects the reply; also
/// returns when its speech ended.
async fn say(device: &mut SimDevice, question: &str) -> anyhow::Result<(Reply, Instant)> {
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&with_silence(&speech_16k(question)?, 300, 1500), true).await?;
    let speech_ended = Instant::now() - Duration::from_millis(1500);
    Ok((device.collect_reply(REPLY_WAIT).await?, speech_ended))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xunfei_asr_recognises_while_the_user_speaks() -> anyhow::Result<()> {
    let creds = Credentials::default();
    let iat = XunfeiIatMock::start(creds.clone(), TRANSCRIPT).await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 It is sunny in Beijing.")).await?;
    let server = server(&mock, &[asr_entry(&iat, &creds)]).await?;
    let mut device = server.device("aa:bb:cc:00:0f:01", 1).await?;
    let (reply, speech_ended) = say(&mut device, QUESTION).await?;
    device.close_abruptly().await;

    // The mock's partial guess (sent while the user spoke) was replaced by the final result
    // (dynamic correction): the final text alone.
    assert_eq!(iat.events().count("partial"), 1, "a partial result came while speaking");
    assert_eq!(reply.stt.as_deref(), Some(TRANSCRIPT));
    assert_eq!(reply.sentences, ["It is sunny in Beijing"]);
    assert!(reply.audio_ms() > 500, "the reply is heard");
    assert!(asked_the_llm(&mock, TRANSCRIPT), "the transcript reached the LLM");
    // Audio reached the platform while the user was still speaking.
    let first_audio = iat.events().first("audio").expect("audio reached the mock");
    assert!(first_audio + Duration::from_millis(500) < speech_ended, "audio streamed before the end of speech");
    assert!(iat.events().count("audio") > 10, "sent frame by frame");
    // The first frame carried the Python entry's parameters.
    let first = &iat.first_frames()[0];
    assert_eq!(first["header"]["app_id"], creds.app_id.as_str());
    assert_eq!(first["parameter"]["iat"]["domain"], "slm");
    assert_eq!(first["parameter"]["iat"]["accent"], "mandarin");
    assert_eq!(first["parameter"]["iat"]["dwa"], "wpgs");
    assert!(xiaozhi_e2e::vendors::is_speech(&iat.last_audio(), 16_000, 1000), "the mock heard the speech");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xunfei_asr_error_frame_is_answered_and_the_session_goes_on() -> anyhow::Result<()> {
    let creds = Credentials::default();
    let iat = XunfeiIatMock::start(creds.clone(), TRANSCRIPT).await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 It is sunny in Beijing.")).await?;
    let server = server(&mock, &[asr_entry(&iat, &creds)]).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    let mut device = server.device("aa:bb:cc:00:0f:02", 1).await?;

    iat.set_error(Some((11200, "auth no license".into())));
    let (reply, _) = say(&mut device, QUESTION).await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES, "the device hears the error response");
    assert!(reply.audio_ms() > 300);

    // The same session: the platform is back.
    iat.set_error(None);
    let (reply, _) = say(&mut device, QUESTION).await?;
    assert_eq!(reply.stt.as_deref(), Some(TRANSCRIPT));
    assert_eq!(reply.sentences, ["It is sunny in Beijing"]);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xunfei_tts_speaks_a_typed_turn_with_first_audio_before_synthesis_ends() -> anyhow::Result<()> {
    let creds = Credentials::default();
    // 200 ms to the first audio, then half real time: a sentence of ~2.5 s takes ~1.3 s to send.
    let tts = XunfeiTtsMock::start(creds.clone(), Timing::new(Duration::from_millis(200), 0.5)).await?;
    let sentence = "The weather in Beijing is sunny and warm all day today";
    let mock = MockOpenAi::start(MockScript::default().reply(format!("🙂 {sentence}."))).await?;
    let server = server(&mock, &[tts_entry(&tts, &creds)]).await?;
    let reply = typed_turn(&server, "aa:bb:cc:00:0f:03", "how is the weather").await?;

    assert_eq!(reply.sentences, [sentence]);
    assert!(reply.audio_ms() > 1500, "the device heard the sentence ({} ms)", reply.audio_ms());
    assert_eq!(tts.sentences().iter().map(|s| s.trim_end_matches('.')).collect::<Vec<_>>(), [sentence]);
    let (first_heard, _) = reply.frames.first().expect("audio frames");
    let last_sent = tts.events().last("audio").expect("the mock sent audio");
    assert!(*first_heard < last_sent, "first audio heard before the mock finished sending the sentence");
    // The sentence went in as it was written: status 0 first, status 2 last, the Python entry's
    // parameters on every request.
    let requests = tts.requests();
    assert_eq!(requests.first().map(|r| r["header"]["status"].clone()), Some(0.into()));
    assert_eq!(requests.last().map(|r| r["header"]["status"].clone()), Some(2.into()));
    for request in &requests {
        assert_eq!(request["header"]["app_id"], creds.app_id.as_str());
        assert_eq!(request["parameter"]["tts"]["vcn"], "x5_lingxiaoxuan_flow");
        assert_eq!(request["parameter"]["oral"]["oral_level"], "mid");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xunfei_tts_error_frame_is_answered_and_the_session_goes_on() -> anyhow::Result<()> {
    let creds = Credentials::default();
    let tts = XunfeiTtsMock::start(creds.clone(), Timing::default()).await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 This sentence will fail.")).await?;
    let server = server(&mock, &[tts_entry(&tts, &creds)]).await?;
    tts.fail_on(Some(("will fail", (11200, "auth no license".into()))));

    let mut device = server.device("aa:bb:cc:00:0f:04", 1).await?;
    device.detect("say something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["This sentence will fail", "Sorry", "something went wrong"]);
    assert!(reply.audio_ms() > 300, "the error response is heard");

    // The same session serves the next turn.
    mock.set_script(MockScript::default().reply("🙂 Back again."));
    device.detect("hello again").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["Back again"]);
    assert!(reply.audio_ms() > 300);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mocks_refuse_bad_signatures_and_stale_dates() -> anyhow::Result<()> {
    let creds = Credentials::default();
    let iat = XunfeiIatMock::start(creds.clone(), TRANSCRIPT).await?;
    let base = iat.url().trim_end_matches("/v1").to_owned();
    let host = base.trim_start_matches("ws://").to_owned();
    let now = chrono::Utc::now();
    let date = |at: chrono::DateTime<chrono::Utc>| at.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let status = |url: String| async move {
        match tokio_tungstenite::connect_async(url).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
            Err(e) => panic!("unexpected: {e}"),
        }
    };
    assert_eq!(status(signed_url(&base, &host, "/v1", &creds, &date(now))).await, 101);
    let wrong = Credentials { api_secret: "wrong".into(), ..creds.clone() };
    assert_eq!(status(signed_url(&base, &host, "/v1", &wrong, &date(now))).await, 401);
    let stale = now - chrono::Duration::seconds(400);
    assert_eq!(status(signed_url(&base, &host, "/v1", &creds, &date(stale))).await, 403);
    assert_eq!(status(format!("{base}/v1")).await, 401);

    // The server's provider with a wrong secret: refused at the handshake, the error response.
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Unused.")).await?;
    let server = server(&mock, &[asr_entry(&iat, &wrong)]).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    let mut device = server.device("aa:bb:cc:00:0f:05", 1).await?;
    let (reply, _) = say(&mut device, "hello there").await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    assert_eq!(iat.events().count("connect"), 1, "only the correctly signed test connection got through");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_entries_load_with_every_key_known_and_start_without_credentials() -> anyhow::Result<()> {
    use xiaozhi_server::config::{ConfigSource, load};
    let base = xiaozhi_e2e::harness::repo_root().join("tests/assets/python-v0.9.6-config.yaml");
    // The Python file's entries, with the keys its comments and providers know set too.
    let selection = "selected_module:\n  ASR: XunfeiStreamASR\n  LLM: AliLLM\n  TTS: XunFeiTTS\n\
        ASR:\n  XunfeiStreamASR:\n    dwa: wpgs\n\
        TTS:\n  XunFeiTTS:\n    private_voice: \"\"\n    oral_level: high\n    spark_assist: 1\n    stop_split: \"0\"\n    \
        remain: 0\n    format: raw\n    sample_rate: 24000\n    volume: 50\n    speed: \"50\"\n    pitch: 50\n";
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join(".config.yaml"), selection)?;
    let loaded = load(&ConfigSource::new(&base, dir.path()))?;
    let about: Vec<&String> =
        loaded.warnings.iter().filter(|w| w.contains(".XunfeiStreamASR.") || w.contains(".XunFeiTTS.")).collect();
    assert!(about.is_empty(), "{about:?}");
    // Placeholder credentials count as unset: the server starts; requests fail until they are set.
    let server = TestServer::start_with_base(&base, selection).await?;
    let device = server.device("aa:bb:cc:00:0f:06", 1).await?;
    assert_eq!(device.server_hello()["type"], "hello");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}
