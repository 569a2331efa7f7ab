//! End-to-end tests of the Tencent Cloud providers (`ASR` and `TTS` `type: tencent`) against
//! the Tencent Cloud API 3.0 mock (`vendors::tencent`, TC3-HMAC-SHA256 checked like Tencent):
//! a spoken turn recognized by `SentenceRecognition`, a typed turn spoken by `TextToVoice`, each
//! with the vendor's error answer turned into the spoken error response on a session that goes
//! on; the signature refused like Tencent refuses it.
//!
//! `TextToVoice` is not a streaming API: the first audio of a sentence arrives with all of it,
//! which one test pins down on the mock's timeline.

use std::time::Duration;

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, REPLY_WAIT, providers_yaml, typed_turn};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_e2e::vendors::tencent::{SECRET_ID, SECRET_KEY, TencentMock};
use xiaozhi_e2e::vendors::{Timing, is_speech};
use xiaozhi_server::asr::Asr;
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::remote::ProviderError;
use xiaozhi_server::tts::Tts;

const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];
const TRANSCRIPT: &str = "What is the weather like today";

/// The Python server's `ASR.TencentASR` entry (appid written as a number), pointed at the mock.
fn asr_entry(mock: &TencentMock, secret_key: &str) -> Entry {
    Entry::asr(format!(
        "type: tencent\nappid: 1300000000\nsecret_id: {SECRET_ID}\nsecret_key: {secret_key}\noutput_dir: tmp/\napi_url: \"{}\"",
        mock.url()
    ))
}

/// The Python server's `TTS.TencentTTS` entry (voice written as a number), pointed at the mock.
fn tts_entry(mock: &TencentMock) -> Entry {
    Entry::tts(format!(
        "type: tencent\noutput_dir: tmp/\nappid: \"1300000000\"\nsecret_id: {SECRET_ID}\nsecret_key: {SECRET_KEY}\nregion: ap-guangzhou\nvoice: 101001\napi_url: \"{}\"",
        mock.url()
    ))
}

async fn server(openai: &MockOpenAi, entries: &[Entry]) -> anyhow::Result<TestServer> {
    TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(openai, entries))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_recognizes_a_spoken_turn_and_an_error_answer_becomes_the_error_response() -> anyhow::Result<()> {
    let tencent = TencentMock::start(TRANSCRIPT).await?;
    let openai = MockOpenAi::start(MockScript::default().reply("🙂 Sunny all day.")).await?;
    openai.warm_tts(&ERROR_SENTENCES).await?;
    let server = server(&openai, &[asr_entry(&tencent, SECRET_KEY)]).await?;

    let mut device = server.device("aa:bb:cc:14:70:01", 1).await?;
    let utterance = with_silence(&speech_16k("what is the weather like today")?, 300, 1500);
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&utterance, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some(TRANSCRIPT), "{}", reply.summary());
    assert_eq!(reply.sentences, ["Sunny all day"]);
    let seen = tencent.seen();
    assert_eq!(seen.len(), 1, "one SentenceRecognition per utterance");
    assert_eq!(seen[0].action, "SentenceRecognition");
    assert_eq!(seen[0].body["EngSerViceType"], "16k_zh");
    assert_eq!(seen[0].region, "ap-shanghai", "the region the Python provider sends");
    let seconds = seen[0].body["DataLen"].as_f64().unwrap_or_default() / 32_000.0;
    assert!((2.0..20.0).contains(&seconds), "the whole utterance went up: {seconds} s");

    // Tencent answers an error: the device hears the error response, the session goes on.
    tencent.fail("SentenceRecognition", "", 1, "FailedOperation.ErrorRecognize", "Recognition failed.");
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&utterance, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ERROR_SENTENCES, "{}", reply.summary());
    assert!(reply.audio_ms() > 300, "the error response is heard");
    assert_eq!(tencent.events.count("asr error"), 1);

    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&utterance, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some(TRANSCRIPT), "the same session recognizes again");
    assert_eq!(reply.sentences, ["Sunny all day"]);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_speaks_a_typed_turn_and_an_error_answer_becomes_the_error_response() -> anyhow::Result<()> {
    let tencent = TencentMock::start("").await?;
    let openai = MockOpenAi::start(MockScript::default().reply("🙂 Hello from Tencent Cloud.")).await?;
    let server = server(&openai, &[tts_entry(&tencent)]).await?;

    let reply = typed_turn(&server, "aa:bb:cc:14:70:02", "say hello").await?;
    assert_eq!(reply.sentences, ["Hello from Tencent Cloud"], "{}", reply.summary());
    assert!(reply.audio_ms() > 500, "the device heard the sentence: {} ms", reply.audio_ms());
    let pcm16k = xiaozhi_server::audio::resample::resample(&reply.pcm, reply.sample_rate, 16_000);
    assert!(is_speech(&pcm16k, 16_000, 500), "real speech, not silence");
    let spoken: Vec<_> = tencent.seen().into_iter().filter(|s| s.body["Text"] == "Hello from Tencent Cloud").collect();
    assert_eq!(spoken.len(), 1, "{:?}", tencent.seen());
    assert_eq!(spoken[0].body["VoiceType"], 101001);
    assert_eq!(spoken[0].body["Codec"], "wav");
    assert_eq!(spoken[0].region, "ap-guangzhou");

    // Tencent answers an error for one sentence: its subtitle, then the error response; the same
    // session speaks the next answer.
    tencent.fail("TextToVoice", "Broken", usize::MAX, "InternalError", "An internal error has occurred.");
    openai.set_script(MockScript::default().reply("🙂 Broken voice today."));
    let mut device = server.device("aa:bb:cc:14:70:03", 1).await?;
    device.detect("say something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["Broken voice today", "Sorry", "something went wrong"], "{}", reply.summary());
    assert!(reply.audio_ms() > 300, "the error response is heard");
    assert!(tencent.events.count("tts error") >= 1);
    openai.set_script(MockScript::default().reply("🙂 All good now."));
    device.detect("and now").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["All good now"], "{}", reply.summary());
    assert!(reply.audio_ms() > 300);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_first_audio_comes_with_the_whole_sentence() -> anyhow::Result<()> {
    // TextToVoice answers once the sentence is synthesized: nothing reaches the device before.
    let tencent = TencentMock::start("").await?;
    tencent.set_timing(Timing::new(Duration::from_millis(300), 0.3));
    let openai =
        MockOpenAi::start(MockScript::default().reply("🙂 This sentence is synthesized in one piece.")).await?;
    let server = server(&openai, &[tts_entry(&tencent)]).await?;
    let reply = typed_turn(&server, "aa:bb:cc:14:70:04", "one piece").await?;
    assert_eq!(reply.sentences, ["This sentence is synthesized in one piece"]);
    let first_audio = reply.frames.first().map(|(at, _)| *at).expect("audio");
    let answered = tencent.events.first("tts answer").expect("answered");
    let requested = tencent.events.first("tts request").expect("requested");
    assert!(answered.duration_since(requested) >= Duration::from_millis(300), "the mock paced its synthesis");
    assert!(first_audio >= answered, "first audio arrives after the whole sentence was answered");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn the_mock_refuses_a_wrong_signature_like_tencent_and_the_error_names_the_code_not_the_key() -> anyhow::Result<()>
{
    let tencent = TencentMock::start(TRANSCRIPT).await?;
    let speech = with_silence(&speech_16k("hello")?, 100, 100);

    let asr_config = |secret_id: &str, secret_key: &str| xiaozhi_server::asr::tencent::Config {
        secret_id: secret_id.into(),
        secret_key: secret_key.into(),
        api_url: tencent.url(),
        ..Default::default()
    };
    let good = xiaozhi_server::asr::tencent::TencentAsr::new(asr_config(SECRET_ID, SECRET_KEY))?;
    assert_eq!(good.transcribe(&speech).await?, TRANSCRIPT);
    for (id, key, code) in [
        (SECRET_ID, "wrongSecretKey0001", "AuthFailure.SignatureFailure"),
        ("AKIDunknown", SECRET_KEY, "AuthFailure.SecretIdNotFound"),
    ] {
        let asr = xiaozhi_server::asr::tencent::TencentAsr::new(asr_config(id, key))?;
        match asr.transcribe(&speech).await {
            Err(ProviderError::Protocol { message, .. }) => {
                assert!(message.contains(code), "{message}");
                assert!(!message.contains(key), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    let tts = xiaozhi_server::tts::tencent::TencentTts::new(xiaozhi_server::tts::tencent::Config {
        secret_id: SECRET_ID.into(),
        secret_key: "wrongSecretKey0001".into(),
        api_url: tencent.url(),
        ..Default::default()
    })?;
    match tts.speak("hello").await {
        Err(ProviderError::Protocol { message, .. }) => {
            assert!(message.contains("AuthFailure.SignatureFailure"), "{message}")
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a wrong key is refused"),
    }
    assert_eq!(tencent.events.count("auth refused"), 3);
    assert_eq!(tencent.seen().len(), 1, "only the signed request got through");
    Ok(())
}
