//! End-to-end tests of the Alibaba Cloud NLS providers (`TTS.aliyun_stream`, CosyVoice streaming
//! synthesis; `ASR.aliyun_stream`, real-time recognition) against the NLS mock
//! ([`xiaozhi_e2e::vendors::aliyun_nls`]): a turn through the device simulator, the vendor's
//! error frame answered with the error response while the session goes on, streaming both ways,
//! and the token obtained from CreateToken with a signed request.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, REPLY_WAIT, providers_yaml, typed_turn};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_e2e::vendors::Timing;
use xiaozhi_e2e::vendors::aliyun_nls::{ACCESS_KEY_ID, ACCESS_KEY_SECRET, APPKEY, Fault, NlsMock, TOKEN, wait_for};
use xiaozhi_server::asr::aliyun_stream::Config as AsrConfig;
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::tts::aliyun_stream::{AliyunStreamTts, Config as TtsConfig};
use xiaozhi_server::tts::{AudioChunk, Tts};

const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];

fn tts_entry(nls: &NlsMock, auth: &str) -> Entry {
    Entry::tts(format!(
        "type: aliyun_stream\nappkey: {APPKEY}\nvoice: longxiaochun\nhost: \"{}\"\ntoken_url: \"{}\"\n\
         sample_rate: 16000\nformat: pcm\noutput_dir: tmp/\ntimeout: 5\n{auth}",
        nls.gateway_url(),
        nls.token_url()
    ))
}

fn asr_entry(nls: &NlsMock, auth: &str) -> Entry {
    Entry::asr(format!(
        "type: aliyun_stream\nappkey: {APPKEY}\nhost: \"{}\"\ntoken_url: \"{}\"\nmax_sentence_silence: 800\n\
         output_dir: tmp/\ntimeout: 5\n{auth}",
        nls.gateway_url(),
        nls.token_url()
    ))
}

async fn start_server(mock: &MockOpenAi, entries: &[Entry]) -> anyhow::Result<TestServer> {
    TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(mock, entries))).await
}

/// The first time `name` happened after `since`.
fn first_after(nls: &NlsMock, name: &str, since: Instant) -> Option<Instant> {
    nls.events().all().into_iter().find(|(n, at)| n == name && *at >= since).map(|(_, at)| at)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_speaks_a_typed_turn_and_the_first_audio_comes_before_the_sentence_is_synthesized() -> anyhow::Result<()> {
    // A real-time synthesizer: 1 s of audio takes 1 s.
    let nls = NlsMock::start(Timing::new(Duration::from_millis(150), 1.0), "").await?;
    let mock =
        MockOpenAi::start(MockScript::default().reply("🙂 The weather in Hangzhou is sunny and warm today.")).await?;
    let server = start_server(&mock, &[tts_entry(&nls, &format!("token: {TOKEN}"))]).await?;
    let asked = Instant::now();
    let reply = typed_turn(&server, "aa:bb:cc:71:00:01", "weather?").await?;
    assert_eq!(reply.sentences, ["The weather in Hangzhou is sunny and warm today"]);
    assert!(reply.audio_ms() > 1000, "the device heard {} ms", reply.audio_ms());
    assert!(nls.tts_texts().iter().any(|t| t.contains("sunny and warm")), "{:?}", nls.tts_texts());
    let first_frame = reply.frames.first().map(|(at, _)| *at).expect("audio frames");
    let synthesized = first_after(&nls, "tts_sentence_end", asked).expect("the mock finished the sentence");
    assert!(
        first_frame + Duration::from_millis(500) < synthesized,
        "first audio {:?} after asking, the mock finished synthesizing at {:?}",
        first_frame - asked,
        synthesized - asked
    );
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_task_failed_is_answered_with_the_error_response_and_the_session_goes_on() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::default(), "").await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 No voice today.")).await?;
    let server = start_server(&mock, &[tts_entry(&nls, &format!("token: {TOKEN}"))]).await?;
    let mut device = server.device("aa:bb:cc:71:00:02", 1).await?;
    nls.fail_next(Fault { status: 40_000_003, text: "PARAMETER_INVALID:voice 'x' is not supported".into() });
    device.detect("say something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.sentences, ["No voice today", ERROR_SENTENCES[0], ERROR_SENTENCES[1]]);
    assert!(reply.audio_ms() > 300, "the error response is heard ({} ms)", reply.audio_ms());
    assert_eq!(nls.events().count("task_failed"), 1);
    // The same session: the next turn is spoken normally.
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
async fn tts_token_from_create_token_is_signed_and_cached_and_a_bad_secret_is_refused() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::default(), "").await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Signed and sealed.")).await?;
    let keys = format!("access_key_id: {ACCESS_KEY_ID}\naccess_key_secret: \"{ACCESS_KEY_SECRET}\"\n");
    let server = start_server(&mock, &[tts_entry(&nls, &keys)]).await?;
    for i in 0..2 {
        let reply = typed_turn(&server, &format!("aa:bb:cc:71:00:1{i}"), "hello").await?;
        assert_eq!(reply.sentences, ["Signed and sealed"]);
        assert!(reply.audio_ms() > 300);
    }
    assert_eq!(nls.create_token_calls(), 1, "the token is kept until it expires");
    assert_eq!(nls.refused(), 0);
    server.server.shutdown().await;

    // A wrong secret: CreateToken refuses the signature, nothing is heard but the error response.
    let keys = format!("access_key_id: {ACCESS_KEY_ID}\naccess_key_secret: \"not-the-secret\"\n");
    let server = start_server(&mock, &[tts_entry(&nls, &keys)]).await?;
    let reply = typed_turn(&server, "aa:bb:cc:71:00:19", "hello").await?;
    assert_eq!(reply.sentences[0], "Signed and sealed");
    assert!(nls.refused() >= 1, "the mock refused the signature");
    assert_eq!(nls.create_token_calls(), 1);
    server.server.shutdown().await;
    Ok(())
}

/// One spoken utterance on `device`: `text` (espeak-ng, real time) and then silence until the end
/// of speech.
async fn speak(device: &xiaozhi_server::simulator::SimDevice, text: &str) -> anyhow::Result<()> {
    device.listen_start(ListenMode::Auto).await?;
    device.stream_speech(&with_silence(&speech_16k(text)?, 300, 1500), true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_recognizes_a_spoken_turn_while_the_user_speaks() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::default(), "What is the weather like today?").await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Sunny.")).await?;
    let keys = format!("access_key_id: {ACCESS_KEY_ID}\naccess_key_secret: \"{ACCESS_KEY_SECRET}\"\n");
    let server = start_server(&mock, &[asr_entry(&nls, &keys)]).await?;
    let mut device = server.device("aa:bb:cc:71:00:21", 1).await?;
    speak(&device, "what is the weather like today").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("What is the weather like today?"));
    assert_eq!(reply.sentences, ["Sunny"]);
    assert_eq!(nls.create_token_calls(), 1);
    // Streaming: the audio reached the gateway while the user was still speaking, well before
    // StopTranscription at the end of speech.
    let first_audio = nls.events().first("asr_audio").expect("audio reached the gateway");
    let stop = nls.events().first("asr_stop").expect("StopTranscription");
    assert!(
        first_audio + Duration::from_millis(1000) < stop,
        "audio arrived only {:?} before the stop",
        stop - first_audio
    );
    let before_stop =
        nls.events().all().iter().filter(|(n, at)| n == "asr_audio" && *at + Duration::from_millis(500) < stop).count();
    assert!(before_stop >= 10, "only {before_stop} audio frames arrived before the end of speech");
    assert!(nls.asr_audio_ms()[0] >= 1000, "{:?}", nls.asr_audio_ms());
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_task_failed_is_answered_with_the_error_response_and_the_session_goes_on() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::default(), "Tell me a joke.").await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Here is one.")).await?;
    let server = start_server(&mock, &[asr_entry(&nls, &format!("token: {TOKEN}"))]).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    let mut device = server.device("aa:bb:cc:71:00:22", 1).await?;
    nls.fail_next(Fault { status: 40_270_002, text: "DECODE_ERROR:audio decoding failed".into() });
    speak(&device, "tell me a joke").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt, None);
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    assert!(reply.audio_ms() > 300);
    assert!(wait_for(nls.events(), "task_failed", 1, Duration::from_secs(1)).await);
    // The same session: the next utterance is recognized.
    speak(&device, "tell me a joke").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt.as_deref(), Some("Tell me a joke."));
    assert_eq!(reply.sentences, ["Here is one"]);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_with_a_wrong_token_is_refused_at_the_handshake() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::default(), "Hello.").await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Hi.")).await?;
    let server = start_server(&mock, &[asr_entry(&nls, "token: not-a-valid-token")]).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    let mut device = server.device("aa:bb:cc:71:00:23", 1).await?;
    speak(&device, "hello").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    assert_eq!(reply.stt, None);
    assert_eq!(reply.sentences, ERROR_SENTENCES);
    assert!(nls.refused() >= 1);
    assert_eq!(nls.events().count("asr_started"), 0);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

fn tts_provider(nls: &NlsMock) -> anyhow::Result<AliyunStreamTts> {
    let cfg: TtsConfig = serde_yaml_ng::from_str(&format!(
        "appkey: {APPKEY}\ntoken: {TOKEN}\nhost: \"{}\"\ntimeout: 5\n",
        nls.gateway_url()
    ))?;
    Ok(AliyunStreamTts::new(cfg)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tts_synthesizes_the_text_as_it_is_written_and_dropping_the_stream_closes_the_task() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::new(Duration::from_millis(50), 1.0), "").await?;
    let tts = tts_provider(&nls)?;
    assert!(tts.streams_text());
    let (text, pieces) = tokio::sync::mpsc::channel(8);
    text.send("The first sentence arrives ".into()).await?;
    text.send("in two pieces. And then".into()).await?;
    let mut audio = tts.speak_text(pieces).await?;
    // Audio of the first sentence while the second is still being written.
    let first = tokio::time::timeout(Duration::from_secs(5), audio.next()).await?;
    assert!(matches!(first, Some(Ok(AudioChunk::Pcm { sample_rate: 16_000, .. }))), "{first:?}");
    assert_eq!(nls.events().count("tts_completed"), 0);
    // The turn is aborted: the stream (and the text) dropped, the task is closed at once.
    drop(audio);
    drop(text);
    assert!(wait_for(nls.events(), "tts_aborted", 1, Duration::from_secs(2)).await, "the connection was closed");
    assert_eq!(nls.events().count("tts_completed"), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_dropping_the_recognition_closes_the_task() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::default(), "Hello.").await?;
    let cfg: AsrConfig = serde_yaml_ng::from_str(&format!(
        "appkey: {APPKEY}\ntoken: {TOKEN}\nhost: \"{}\"\ntimeout: 5\n",
        nls.gateway_url()
    ))?;
    let asr = xiaozhi_server::asr::aliyun_stream::build(&cfg)?;
    let mut recognition = asr.open().await.expect("a streaming recognizer")?;
    recognition.push(&speech_16k("hello")?).await?;
    assert!(wait_for(nls.events(), "asr_audio", 1, Duration::from_secs(2)).await);
    drop(recognition);
    assert!(wait_for(nls.events(), "asr_aborted", 1, Duration::from_secs(2)).await, "the connection was closed");
    assert_eq!(nls.events().count("asr_stop"), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asr_transcribes_a_whole_utterance_and_silence_gives_no_text() -> anyhow::Result<()> {
    let nls = NlsMock::start(Timing::default(), "Good morning.").await?;
    let cfg: AsrConfig = serde_yaml_ng::from_str(&format!(
        "appkey: {APPKEY}\naccess_key_id: {ACCESS_KEY_ID}\naccess_key_secret: \"{ACCESS_KEY_SECRET}\"\n\
         token_url: \"{}\"\nhost: \"{}\"\ntimeout: 5\n",
        nls.token_url(),
        nls.gateway_url()
    ))?;
    let asr = xiaozhi_server::asr::aliyun_stream::build(&cfg)?;
    assert_eq!(asr.transcribe(&speech_16k("good morning")?).await?, "Good morning.");
    assert_eq!(asr.transcribe(&vec![0i16; 8_000]).await?, "");
    assert_eq!(nls.create_token_calls(), 1);
    Ok(())
}
