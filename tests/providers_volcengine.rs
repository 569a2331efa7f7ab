//! End-to-end tests of the Volcengine providers (`doubao`, `huoshan_double_stream` TTS and
//! `doubao_stream` ASR) against their vendor mocks (`xiaozhi_e2e::vendors::volcengine`): a turn
//! through the device simulator, a vendor error answered with `system_error_response` and the
//! same session serving on, and the streaming timelines.

use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, REPLY_WAIT, providers_yaml, spoken_turn, typed_turn};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_e2e::vendors::Timing;
use xiaozhi_e2e::vendors::volcengine::{Account, BidiTtsMock, DoubaoHttpMock, SaucMock, TtsFailure};
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::SimEvent;

const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];

async fn start_server(mock: &MockOpenAi, entries: &[Entry]) -> anyhow::Result<TestServer> {
    TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(mock, entries))).await
}

fn doubao_entry(url: &str, token: &str) -> Entry {
    Entry::tts(format!(
        "type: doubao\napi_url: \"{url}\"\nvoice: BV001_streaming\noutput_dir: tmp/\nauthorization: \"Bearer;\"\n\
         appid: 4242\naccess_token: \"{token}\"\ncluster: volcano_tts\nspeed_ratio: 1.0\nvolume_ratio: 1.0\n\
         pitch_ratio: 1.0\ntimeout: 5"
    ))
}

fn huoshan_entry(url: &str, token: &str) -> Entry {
    Entry::tts(format!(
        "type: huoshan_double_stream\nws_url: \"{url}\"\nappid: \"4242\"\naccess_token: \"{token}\"\n\
         resource_id: volc.service_type.10029\nspeaker: zh_female_wanwanxiaohe_moon_bigtts\n\
         enable_ws_reuse: true\naudio_params:\n  speech_rate: 0\n  loudness_rate: 0\n\
         additions:\n  post_process:\n    pitch: 0\ntimeout: 5"
    ))
}

fn sauc_entry(url: &str, token: &str) -> Entry {
    Entry::asr(format!(
        "type: doubao_stream\nws_url: \"{url}\"\nappid: 4242\naccess_token: \"{token}\"\n\
         resource_id: volc.bigasr.sauc.duration\nboosting_table_name: \"\"\ncorrect_table_name: \"\"\n\
         enable_multilingual: false\nend_window_size: 200\noutput_dir: tmp/\ntimeout: 5"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubao_http_tts_speaks_and_survives_a_vendor_error() -> anyhow::Result<()> {
    let vendor = DoubaoHttpMock::start(Account::new("4242", "volc-token", "")).await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Hello from Doubao.")).await?;
    let server = start_server(&mock, &[doubao_entry(&vendor.url(), "volc-token")]).await?;

    // (a) A typed turn: the device hears the sentence synthesized by the vendor.
    let reply = typed_turn(&server, "aa:bb:cc:0e:00:01", "hi").await?;
    assert_eq!(reply.sentences, ["Hello from Doubao"]);
    assert!(reply.audio_ms() > 300, "real audio: {}", reply.summary());
    assert!(vendor.events.count("request") >= 1);

    // (b) The vendor fails the sentence: the error response is heard (synthesized by the same
    // vendor), and the same session serves the next turn.
    vendor.fail_sentences_with(Some("Broken"));
    mock.set_reply("🙂 Broken voice here.");
    let mut device = server.device("aa:bb:cc:0e:00:02", 1).await?;
    device.detect("say it").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["Broken voice here", ERROR_SENTENCES[0], ERROR_SENTENCES[1]]);
    assert!(reply.audio_ms() > 300, "the error response is heard: {}", reply.summary());
    mock.set_reply("🙂 Working again.");
    device.detect("again").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["Working again"]);
    assert!(reply.audio_ms() > 300);
    device.close_abruptly().await;

    // A wrong token is refused by the vendor (HTTP 401): the error response again, no panic.
    vendor.fail_sentences_with(None);
    let bad = start_server(&mock, &[doubao_entry(&vendor.url(), "wrong-token")]).await?;
    let reply = typed_turn(&bad, "aa:bb:cc:0e:00:03", "hi").await?;
    assert!(vendor.events.count("refused") >= 1);
    assert_eq!(reply.sentences.first().map(String::as_str), Some("Working again"));
    server.server.shutdown().await;
    bad.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huoshan_double_stream_streams_text_in_and_audio_out() -> anyhow::Result<()> {
    let account = Account::new("4242", "volc-token", "volc.service_type.10029");
    // 150 ms to the first audio, then half real time: a sentence of about 2 s takes 1 s to send.
    let vendor = BidiTtsMock::start(account, Timing::new(Duration::from_millis(150), 0.5)).await?;
    let reply_text = "🙂 Hello from the volcano where the audio streams while the sentence is still being written.";
    let mock =
        MockOpenAi::start(MockScript::default().reply(reply_text).latency(Duration::ZERO, Duration::from_millis(20)))
            .await?;
    let server = start_server(&mock, &[huoshan_entry(&vendor.url(), "volc-token")]).await?;

    // (a) A typed turn: real audio, the text went in piece by piece.
    let reply = typed_turn(&server, "aa:bb:cc:0e:01:01", "hi").await?;
    assert_eq!(
        reply.sentences,
        ["Hello from the volcano where the audio streams while the sentence is still being written"]
    );
    assert!(reply.audio_ms() > 1000, "real audio: {}", reply.summary());
    assert!(vendor.events.count("task_request") >= 2, "the text is sent as it is written");

    // (c) The device hears the first audio before the vendor has sent the sentence's last audio.
    let first_heard = reply.frames.first().map(|(at, _)| *at).expect("audio frames");
    let vendor_done = vendor.events.last("sentence_done").expect("the vendor finished the sentence");
    assert!(first_heard < vendor_done, "first audio {:?} before the vendor's end", vendor_done - first_heard);

    // (b) An error frame from the vendor: the error response is heard and the same session
    // serves the next turn (on a fresh or reused connection).
    for failure in [TtsFailure::ErrorFrame, TtsFailure::SessionFailed] {
        vendor.fail_sentences_with(Some(("Broken", failure)));
        mock.set_reply("🙂 Broken voice here.");
        let mut device = server.device("aa:bb:cc:0e:01:02", 1).await?;
        device.detect("say it").await?;
        let reply = device.collect_reply(REPLY_WAIT).await?;
        assert_eq!(reply.sentences, ["Broken voice here", ERROR_SENTENCES[0], ERROR_SENTENCES[1]], "{failure:?}");
        assert!(reply.audio_ms() > 300, "{failure:?}: the error response is heard: {}", reply.summary());
        vendor.fail_sentences_with(None);
        mock.set_reply("🙂 Working again.");
        device.detect("again").await?;
        let reply = device.collect_reply(REPLY_WAIT).await?;
        assert_eq!(reply.sentences, ["Working again"], "{failure:?}");
        assert!(reply.audio_ms() > 300);
        device.close_abruptly().await;
    }
    assert!(vendor.events.count("failed") >= 2);
    // Connections are reused between sessions.
    assert!(vendor.events.count("connection") < vendor.events.count("session_start"));

    // An abort mid-sentence drops the audio stream, which closes the vendor connection at once.
    mock.set_reply("🙂 This sentence is long enough to be interrupted while the vendor is still sending its audio.");
    let mut device = server.device("aa:bb:cc:0e:01:03", 1).await?;
    let closed_before = vendor.events.count("closed");
    device.detect("talk").await?;
    let deadline = Instant::now() + REPLY_WAIT;
    loop {
        anyhow::ensure!(Instant::now() < deadline, "no audio before the abort");
        if let Some((_, SimEvent::Audio { .. })) = device.next_event(Duration::from_secs(5)).await {
            break;
        }
    }
    let done_before = vendor.events.count("sentence_done");
    device.abort().await?;
    let aborted = Instant::now();
    while vendor.events.count("closed") == closed_before {
        anyhow::ensure!(aborted.elapsed() < Duration::from_secs(2), "the vendor connection stays open after the abort");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(vendor.events.count("sentence_done"), done_before, "closed while the vendor was still sending");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doubao_stream_asr_recognises_while_the_user_speaks() -> anyhow::Result<()> {
    let account = Account::new("4242", "volc-token", "volc.bigasr.sauc.duration");
    let vendor = SaucMock::start(account, "what time is it").await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 It is noon.")).await?;
    let server = start_server(&mock, &[sauc_entry(&vendor.url(), "volc-token")]).await?;

    // (a) A spoken turn: the vendor's transcript reaches the device and the LLM.
    let reply = spoken_turn(&server, "aa:bb:cc:0e:02:01", "what time is it").await?;
    assert_eq!(reply.stt.as_deref(), Some("what time is it"), "{}", reply.summary());
    assert_eq!(reply.sentences, ["It is noon"]);

    // (c) Audio reaches the vendor while the user is still speaking.
    let speech = speech_16k("what is the weather like in the mountains today")?;
    let speech_ms = speech.len() as u64 * 1000 / 16_000;
    let audio_before = vendor.events.count("audio");
    let mut device = server.device("aa:bb:cc:0e:02:02", 1).await?;
    device.listen_start(ListenMode::Auto).await?;
    let started = Instant::now();
    device.stream_speech(&with_silence(&speech, 300, 1500), true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("what time is it"));
    let end_of_speech = started + Duration::from_millis(300 + speech_ms);
    let first_audio = vendor.events.all().into_iter().filter(|(name, _)| name == "audio").nth(audio_before);
    let (_, first_audio) = first_audio.expect("audio reached the vendor");
    assert!(
        first_audio < end_of_speech,
        "the first audio reached the vendor {:?} after the end of speech",
        first_audio - end_of_speech
    );
    assert!(vendor.events.last("last").expect("a last packet") > end_of_speech);

    // (b) The vendor answers an error frame: the error response, then the same session serves on.
    vendor.fail(Some((45_000_151, "[Invalid audio format]")));
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&with_silence(&speech_16k("hello there")?, 300, 1500), true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES, "{}", reply.summary());
    assert!(vendor.events.count("failed") >= 1);
    vendor.fail(None);
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&with_silence(&speech_16k("what time is it")?, 300, 1500), true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("what time is it"));
    assert_eq!(reply.sentences, ["It is noon"]);
    device.close_abruptly().await;

    // A wrong token is refused at the handshake: the error response.
    let bad = start_server(&mock, &[sauc_entry(&vendor.url(), "wrong-token")]).await?;
    let reply = spoken_turn(&bad, "aa:bb:cc:0e:02:03", "hello there").await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    server.server.shutdown().await;
    bad.server.shutdown().await;
    Ok(())
}
