//! End-to-end: the reply streams from the TTS to the device. Every streaming path speaks a spoken
//! turn with correctly paced Opus (the OpenAI-compatible endpoint answering chunked WAV, raw PCM or
//! Ogg Opus, the templated custom endpoint, Piper clause by clause); Opus that matches the
//! downlink passes through without encoding; an abort inside a streamed clip stops within one
//! frame; a stream that dies mid-sentence speaks what arrived and the turn ends cleanly.

use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::{TestServer, metric, repo_root};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::speech::{espeak_wav, speech_16k, with_silence};
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::{Reply, SimEvent};

const REPLY_WAIT: Duration = Duration::from_secs(30);
const REPLY: &str = "😊 Sure, it is sunny and warm today. A good day for a walk!";
const SENTENCES: [&str; 3] = ["Sure", "it is sunny and warm today", "A good day for a walk"];

/// The mock's speech for `sentences`, in ms (espeak-ng at its default speed, as the mock speaks).
fn spoken_ms(sentences: &[&str]) -> anyhow::Result<u64> {
    let mut total = 0;
    for sentence in sentences {
        let (samples, rate) = espeak_wav(sentence)?;
        total += samples.len() as u64 * 1000 / u64::from(rate);
    }
    Ok(total)
}

/// A spoken turn: the device says the question, the reply comes back.
async fn spoken_turn(server: &TestServer, device_id: &str) -> anyhow::Result<Reply> {
    let mut device = server.device(device_id, 1).await?;
    device.listen_start(ListenMode::Auto).await?;
    let speech = with_silence(&speech_16k("what is the weather like today")?, 300, 1500);
    device.stream_speech(&speech, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    device.close_abruptly().await;
    Ok(reply)
}

/// Checks that `reply` is the whole answer, paced like real time.
fn check_reply(reply: &Reply, expected_ms: u64, what: &str) {
    assert_eq!(reply.sentences, SENTENCES, "{what}");
    assert_eq!(reply.frames_outside_speaking, 0, "{what}");
    assert_eq!(reply.decode_errors, 0, "{what}");
    // Every sentence's last frame is padded: up to 60 ms more each.
    let audio = reply.audio_ms();
    assert!(
        audio + 150 >= expected_ms && audio <= expected_ms + 3 * 60 + 150,
        "{what}: {audio} ms of audio for {expected_ms} ms of speech"
    );
    assert!(reply.max_frames_ahead(60) <= 8.0, "{what}: pacing ran {} frames ahead", reply.max_frames_ahead(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_streaming_tts_path_speaks_paced_opus() -> anyhow::Result<()> {
    let expected = spoken_ms(&SENTENCES)?;
    // A TTS that starts after 100 ms and produces speech at twice real time, in 100 ms pieces.
    let script = MockScript::default().transcript("What is the weather like today?").reply(REPLY).tts_timing(
        Duration::from_millis(100),
        0.5,
        true,
    );
    for format in ["wav", "pcm", "opus", "custom"] {
        let mock = MockOpenAi::start(script.clone()).await?;
        let server = TestServer::start_with_providers(&mock.config_override_yaml_with_tts(format)).await?;
        let reply = spoken_turn(&server, "aa:bb:cc:00:0b:01").await?;
        check_reply(&reply, expected, format);
        let http = server.server.http_addr;
        let passed = metric(http, "xiaozhi_downlink_frames_total{path=\"passed_through\"}").await?;
        let encoded = metric(http, "xiaozhi_downlink_frames_total{path=\"encoded\"}").await?;
        println!(
            "{format}: {} ms of audio in {} frames ({passed} passed through, {encoded} encoded)",
            reply.audio_ms(),
            reply.frames.len()
        );
        if format == "opus" {
            // 24 kHz Ogg Opus in 60 ms packets: what the device decodes, sent as it is.
            assert_eq!(encoded, 0.0, "nothing is encoded");
            assert_eq!(passed as usize, reply.frames.len());
        } else {
            assert_eq!(passed, 0.0);
        }
        let speech =
            mock.requests().into_iter().filter(|r| r.path.ends_with("speech") || r.path.ends_with("custom-tts"));
        assert_eq!(speech.count(), 3, "{format}: one request per sentence");
        server.server.shutdown().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piper_speaks_clause_by_clause() -> anyhow::Result<()> {
    let mock =
        MockOpenAi::start(MockScript::default().transcript("What is the weather like today?").reply(REPLY)).await?;
    let models = repo_root().join("models");
    let piper = models.join("piper/en_US-joe-medium.onnx");
    let providers = mock.config_override_yaml().split("TTS:\n").next().unwrap_or_default().to_owned()
        + &format!("TTS:\n  MockTTS:\n    type: piper\n    model: \"{}\"\n", piper.display());
    let server = TestServer::start_with_providers(&providers).await?;
    let reply = spoken_turn(&server, "aa:bb:cc:00:0b:02").await?;
    assert_eq!(reply.sentences, SENTENCES);
    assert!(reply.audio_ms() > 2000, "{} ms", reply.audio_ms());
    assert_eq!(reply.frames_outside_speaking, 0);
    assert!(reply.max_frames_ahead(60) <= 8.0, "pacing ran {} frames ahead", reply.max_frames_ahead(60));
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_inside_a_streamed_clip_stops_within_one_frame() -> anyhow::Result<()> {
    let long = format!(
        "😊 {}.",
        "Once upon a time there was a little robot who liked to talk about the weather all day long and".repeat(3)
    );
    // Real time: the clip is still streaming in when the abort comes.
    let script = MockScript::default().reply(long).tts_timing(Duration::from_millis(50), 1.0, true);
    let mock = MockOpenAi::start(script).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:0b:03", 1).await?;
    device.detect("tell me a story").await?;
    let mut frames = 0;
    while frames < 20 {
        match device.next_event(REPLY_WAIT).await {
            Some((_, SimEvent::Audio { .. })) => frames += 1,
            Some(_) => {}
            None => anyhow::bail!("no audio before the abort"),
        }
    }
    let aborted_at = Instant::now();
    device.abort().await?;
    let (mut late_frames, mut stop_at) = (0, None);
    while let Some((at, event)) = device.next_event(Duration::from_secs(2)).await {
        match event {
            SimEvent::Audio { .. } if at > aborted_at + Duration::from_millis(60) => late_frames += 1,
            SimEvent::Json(v) if v["type"] == "tts" && v["state"] == "stop" => {
                stop_at.get_or_insert(at);
            }
            _ => {}
        }
    }
    let stop_at = stop_at.ok_or_else(|| anyhow::anyhow!("no tts stop after the abort"))?;
    assert!(stop_at.duration_since(aborted_at) < Duration::from_millis(300));
    assert!(late_frames <= 1, "{late_frames} frames more than one frame after the abort");
    mock.set_script(MockScript::default().reply("🙂 Yes, I am here."));
    device.detect("are you still there").await?;
    // The early first clause: "Yes," is spoken on its own.
    assert_eq!(device.collect_reply(REPLY_WAIT).await?.sentences, ["Yes", "I am here"]);
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_dies_mid_sentence_speaks_what_arrived() -> anyhow::Result<()> {
    // Each sentence's stream breaks off after 300 ms of audio.
    let script = MockScript::default()
        .reply("😊 This sentence is long enough to be cut well before its end. And so is this second one here.")
        .tts_cut_after_ms(300);
    let mock = MockOpenAi::start(script).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:0b:04", 1).await?;
    device.detect("say something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences.len(), 2, "{:?}", reply.sentences);
    // What arrived is spoken: about 300 ms of each sentence, far less than the whole.
    assert!((400..=1000).contains(&reply.audio_ms()), "{} ms", reply.audio_ms());
    assert!(metric(server.server.http_addr, "xiaozhi_provider_errors_total{provider=\"tts\"}").await? >= 2.0);
    // The turn ended cleanly (tts stop came) and the session serves on.
    mock.set_script(MockScript::default().reply("🙂 Fine again."));
    device.detect("and now").await?;
    assert_eq!(device.collect_reply(REPLY_WAIT).await?.sentences, ["Fine again"]);
    server.server.shutdown().await;
    Ok(())
}
