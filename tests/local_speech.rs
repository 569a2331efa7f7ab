//! End-to-end with no mock on the speech path: Silero VAD, local Whisper ASR and local Piper TTS
//! run in the server; only the LLM is the OpenAI-compatible mock. The reply audio the simulated
//! device receives is decoded and transcribed again by local Whisper.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::{TestServer, repo_root};
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_server::asr::Asr;
use xiaozhi_server::asr::whisper::WhisperAsr;
use xiaozhi_server::audio::resample::resample;
use xiaozhi_server::config::WhisperConfig;
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::SimEvent;

const REPLY_WAIT: Duration = Duration::from_secs(60);

fn whisper_dir() -> PathBuf {
    let dir = repo_root().join("../shared/models/whisper-tiny-en");
    assert!(dir.join("config.json").exists(), "the Whisper test model is missing at {}", dir.display());
    dir.canonicalize().expect("whisper dir")
}

fn piper_model() -> PathBuf {
    let model = repo_root().join("models/piper/en_US-joe-medium.onnx");
    assert!(model.exists(), "{} is missing: run models/fetch.sh", model.display());
    model.canonicalize().expect("piper model")
}

/// Lowercase words without punctuation, for comparing transcripts.
fn words(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_alphanumeric() || c.is_whitespace() { c.to_ascii_lowercase() } else { ' ' })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Local ASR and TTS, as a user would write them, with the LLM on `mock`.
fn local_providers(mock: &MockOpenAi) -> String {
    format!(
        "selected_module:\n  VAD: SileroVAD\n  ASR: WhisperLocal\n  LLM: MockLLM\n  TTS: PiperLocal\n\
         ASR:\n  WhisperLocal:\n    type: whisper_onnx\n    model_dir: \"{}\"\n    language: en\n\
         LLM:\n  MockLLM:\n    type: openai\n    base_url: \"{}\"\n    model_name: mock-llm\n    api_key: test\n\
         TTS:\n  PiperLocal:\n    type: piper\n    model: \"{}\"\n",
        whisper_dir().display(),
        mock.base_url(),
        piper_model().display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoken_request_to_spoken_answer_with_local_models() -> anyhow::Result<()> {
    let mock =
        MockOpenAi::start(MockScript::default().reply("😊 It is sunny and warm today. Take a walk in the park."))
            .await?;
    let server = TestServer::start_with_providers(&local_providers(&mock)).await?;
    let mut device = server.device("aa:bb:cc:00:03:01", 1).await?;
    device.listen_start(ListenMode::Auto).await?;
    let request = "what is the weather like today";
    let speech = speech_16k(request)?;
    let audio = with_silence(&speech, 400, 2500);
    let started = Instant::now();
    device.stream_speech(&audio, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    let voiced = speech.iter().rposition(|s| s.unsigned_abs() > 300).map_or(0, |i| i + 1) as u64;
    let voice_end = started + Duration::from_millis(400 + voiced * 1000 / 16_000);
    if let Some((first, _)) = reply.frames.first() {
        eprintln!(
            "local path: first downlink frame {} ms after the end of voice (500 ms of it is the silence window)",
            first.saturating_duration_since(voice_end).as_millis()
        );
    }

    // The stt message is local Whisper's transcript of the request.
    assert_eq!(words(reply.stt.as_deref().unwrap_or("")), request);
    assert!(mock.requests().iter().all(|r| r.path.ends_with("/chat/completions")), "only the LLM is a mock");
    assert!(reply.audio_ms() > 1500, "reply audio {} ms", reply.audio_ms());

    // The reply the device heard, transcribed again by local Whisper, says the LLM's words.
    let whisper = WhisperAsr::load(&WhisperConfig {
        model_dir: whisper_dir().display().to_string(),
        language: "en".into(),
        ..WhisperConfig::default()
    })?;
    let heard = resample(&reply.pcm, reply.sample_rate, 16_000);
    let text = words(&whisper.transcribe(&heard).await?);
    eprintln!("the device heard: {text:?}");
    for word in ["sunny", "warm", "today", "walk", "park"] {
        assert!(text.contains(word), "{word:?} missing from {text:?}");
    }
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_barge_in_aborts_the_reply_and_starts_a_new_turn() -> anyhow::Result<()> {
    let story = "🙂 Here is a long story. ".to_string()
        + &"Once upon a time a little robot walked through the quiet town and talked about the weather. ".repeat(4);
    let mock = MockOpenAi::start(MockScript::default().reply(story).transcript("Stop, what time is it?")).await?;
    let server = TestServer::start(&mock, "").await?;
    let mut device = server.device("aa:bb:cc:00:03:02", 1).await?;
    device.listen_start(ListenMode::Realtime).await?;
    device.detect("tell me a story").await?;
    // Let the reply play for a while.
    let mut frames = 0;
    while frames < 15 {
        match device.next_event(REPLY_WAIT).await {
            Some((_, SimEvent::Audio { .. })) => frames += 1,
            Some(_) => {}
            None => anyhow::bail!("no reply audio"),
        }
    }
    // The user talks over the reply (realtime mode keeps the microphone open).
    let interrupted_at = Instant::now();
    let speech = with_silence(&speech_16k("stop what time is it")?, 200, 1500);
    device.stream_speech(&speech, true).await?;

    let mut stop_at = None;
    let mut stt = None;
    while let Some((at, event)) = device.next_event(Duration::from_secs(10)).await {
        if let SimEvent::Json(v) = event {
            if v["type"] == "tts" && v["state"] == "stop" && stop_at.is_none() {
                stop_at = Some(at);
            }
            if v["type"] == "stt" {
                stt = v["text"].as_str().map(str::to_string);
                break;
            }
        }
    }
    let stop_at = stop_at.expect("the reply was stopped by the barge-in");
    eprintln!(
        "barge-in: tts stop {} ms after the user started talking",
        stop_at.duration_since(interrupted_at).as_millis()
    );
    // Speech start needs ~100 ms of voice; the reply stops well before the user finishes.
    assert!(stop_at.duration_since(interrupted_at) < Duration::from_millis(1500));
    assert_eq!(stt.as_deref(), Some("Stop, what time is it?"), "the interruption became the next turn");
    server.server.shutdown().await;
    Ok(())
}
