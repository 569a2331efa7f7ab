//! End-to-end tests of the self-hosted and SiliconFlow speech providers against their vendor
//! mocks (`xiaozhi_e2e::vendors::{funasr, siliconflow, gpt_sovits, fishspeech}`): a spoken or
//! typed turn through the device simulator, a vendor error answered with `system_error_response`
//! with the same session going on, and streaming (audio reaches the FunASR server while the user
//! speaks; the device hears the first audio before the TTS mock has finished the sentence).

use std::time::{Duration, Instant};

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, REPLY_WAIT, providers_yaml};
use xiaozhi_e2e::speech::{speech_16k, with_silence};
use xiaozhi_e2e::vendors::fishspeech::FishSpeechMock;
use xiaozhi_e2e::vendors::funasr::FunAsrMock;
use xiaozhi_e2e::vendors::gpt_sovits::GptSovitsMock;
use xiaozhi_e2e::vendors::siliconflow::SiliconFlowMock;
use xiaozhi_e2e::vendors::{Events, Timing};
use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::Reply;

const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];
/// A reply long enough (about 3 s of espeak-ng speech) that a streamed sentence is heard well
/// before its synthesis ends.
const REPLY: &str = "😊 The weather is sunny and warm today with a light breeze from the sea.";
const REPLY_SENTENCE: &str = "The weather is sunny and warm today with a light breeze from the sea";
/// The word the TTS mocks refuse to synthesize, and the reply that carries it.
const FORBIDDEN: &str = "Forbidden";

/// The LLM mock's script: [`REPLY`].
fn llm_script() -> MockScript {
    MockScript::default().reply(REPLY)
}

async fn start_server(mock: &MockOpenAi, entries: &[Entry]) -> anyhow::Result<TestServer> {
    TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(mock, entries))).await
}

/// A typed turn on an open device.
async fn typed(device: &mut xiaozhi_server::simulator::SimDevice, text: &str) -> anyhow::Result<Reply> {
    device.detect(text).await?;
    device.collect_reply(REPLY_WAIT).await
}

/// A spoken turn on an open device: `question` said in real time, then silence.
async fn spoken(device: &mut xiaozhi_server::simulator::SimDevice, question: &str) -> anyhow::Result<Reply> {
    device.listen_start(ListenMode::Auto).await?;
    let speech = with_silence(&speech_16k(question)?, 300, 1500);
    device.stream_speech(&speech, true).await?;
    device.collect_reply(REPLY_WAIT).await
}

/// The device heard the reply sentence as real audio.
fn heard_reply(reply: &Reply, what: &str) {
    assert_eq!(reply.sentences, [REPLY_SENTENCE], "{what}");
    assert_eq!(reply.decode_errors, 0, "{what}");
    assert!(reply.audio_ms() > 1_500, "{what}: {} ms of audio", reply.audio_ms());
}

/// The first audio frame of the first turn reached the device before the vendor mock had sent
/// the last piece of audio of that turn's sentence (the mock's first `done`).
fn first_audio_before_synthesis_ended(reply: &Reply, events: &Events, what: &str) {
    let first = reply.frames.first().map(|(at, _)| *at).expect("audio frames");
    let done = events.first("done").expect("the mock finished a sentence");
    assert!(events.count("audio") > 3, "{what}: the mock streamed in pieces");
    assert!(
        first + Duration::from_millis(500) < done,
        "{what}: first audio {:?} before the end of synthesis",
        done.saturating_duration_since(first)
    );
}

/// A TTS provider's whole check: a typed turn heard; a refused sentence answered with the error
/// response, heard, and the same session serving the next turn.
async fn check_tts(server: &TestServer, mock: &MockOpenAi, device_id: &str, what: &str) -> anyhow::Result<Reply> {
    let mut device = server.device(device_id, 1).await?;
    mock.set_reply(REPLY);
    let reply = typed(&mut device, "what is the weather like").await?;
    heard_reply(&reply, what);
    mock.set_reply("🙂 Forbidden words here.");
    let failed = typed(&mut device, "say the forbidden words").await?;
    mock.set_reply(REPLY);
    assert_eq!(failed.sentences, ["Forbidden words here", ERROR_SENTENCES[0], ERROR_SENTENCES[1]], "{what}");
    assert!(failed.audio_ms() > 500, "{what}: the error response is heard ({} ms)", failed.audio_ms());
    let again = typed(&mut device, "and tomorrow").await?;
    heard_reply(&again, &format!("{what}, after the error"));
    device.close_abruptly().await;
    Ok(reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fun_server_recognises_while_the_user_speaks_and_survives_a_decoder_failure() -> anyhow::Result<()> {
    let transcript = "What is the weather like today?";
    let vendor = FunAsrMock::start(transcript, Some("local-key")).await?;
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Sunny.")).await?;
    mock.warm_tts(&ERROR_SENTENCES).await?;
    let entry = Entry::asr(format!(
        "type: fun_server\nhost: 127.0.0.1\nport: {}\nis_ssl: false\napi_key: local-key\noutput_dir: tmp/",
        vendor.port()
    ));
    let server = start_server(&mock, &[entry]).await?;
    let mut device = server.device("aa:bb:cc:0f:00:01", 1).await?;

    let said_at = Instant::now();
    let reply = spoken(&mut device, "what is the weather like today").await?;
    assert_eq!(reply.stt.as_deref(), Some(transcript));
    assert_eq!(reply.sentences, ["Sunny"]);
    // The audio went out while the user spoke: the first frame reached the server long before
    // the end of speech, in many messages.
    let (first_audio, end) = (vendor.events.first("audio").expect("audio"), vendor.events.first("end").expect("end"));
    assert!(first_audio < said_at + Duration::from_millis(800), "audio from the start of speech");
    assert!(end.duration_since(first_audio) > Duration::from_millis(1_000), "audio streamed during the speech");
    assert!(vendor.events.count("audio") > 10);
    let start = &vendor.starts()[0];
    assert_eq!(
        (start["mode"].as_str(), start["wav_format"].as_str(), start["audio_fs"].as_u64()),
        (Some("offline"), Some("pcm"), Some(16_000))
    );

    // The decoder fails: the error response, then the same session recognises again.
    vendor.set_fail(true);
    let failed = spoken(&mut device, "what is the weather like today").await?;
    assert_eq!(failed.sentences, ERROR_SENTENCES);
    assert!(failed.audio_ms() > 500);
    assert_eq!(vendor.events.count("failed"), 1);
    vendor.set_fail(false);
    let again = spoken(&mut device, "what is the weather like today").await?;
    assert_eq!(again.stt.as_deref(), Some(transcript));
    device.close_abruptly().await;
    server.server.shutdown().await;

    // The 2pass server (partials while speaking, the corrected text at the end); a wrong key is
    // refused at the handshake and spoken as the error response.
    let mock = MockOpenAi::start(MockScript::default().reply("🙂 Sunny.")).await?;
    let entry = Entry::asr(format!(
        "type: fun_server\nhost: 127.0.0.1\nport: {}\nis_ssl: false\nmode: 2pass\napi_key: local-key",
        vendor.port()
    ));
    let server = start_server(&mock, &[entry]).await?;
    let mut device = server.device("aa:bb:cc:0f:00:02", 1).await?;
    let reply = spoken(&mut device, "what is the weather like today").await?;
    assert_eq!(reply.stt.as_deref(), Some(transcript));
    assert!(vendor.events.count("partial") >= 2, "2pass partials while speaking");
    device.close_abruptly().await;
    server.server.shutdown().await;

    let entry = Entry::asr(format!(
        "type: fun_server\nhost: 127.0.0.1\nport: {}\nis_ssl: false\napi_key: wrong",
        vendor.port()
    ));
    let server = start_server(&mock, &[entry]).await?;
    let mut device = server.device("aa:bb:cc:0f:00:03", 1).await?;
    let refused = spoken(&mut device, "hello there").await?;
    assert_eq!(refused.sentences, ERROR_SENTENCES);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn siliconflow_streams_its_voice_and_survives_a_refused_sentence() -> anyhow::Result<()> {
    let vendor = SiliconFlowMock::start("sk-sf-test", Timing::new(Duration::from_millis(150), 1.0), FORBIDDEN).await?;
    let mock = MockOpenAi::start(llm_script()).await?;
    let entry = Entry::tts(format!(
        "type: siliconflow\nmodel: FunAudioLLM/CosyVoice2-0.5B\nvoice: FunAudioLLM/CosyVoice2-0.5B:alex\noutput_dir: tmp/\n\
         access_token: sk-sf-test\nresponse_format: wav\nsample_rate: 24000\napi_url: \"{}\"",
        vendor.url()
    ));
    let server = start_server(&mock, &[entry]).await?;
    let reply = check_tts(&server, &mock, "aa:bb:cc:0f:01:01", "siliconflow").await?;
    let request = vendor.requests.lock().map(|r| r[0].clone()).unwrap_or_default();
    assert_eq!(request["voice"], "FunAudioLLM/CosyVoice2-0.5B:alex");
    assert_eq!(request["stream"], true);
    assert_eq!(request["sample_rate"], 24_000);
    assert_eq!(vendor.events.count("failed"), 1);
    first_audio_before_synthesis_ended(&reply, &vendor.events, "siliconflow");
    server.server.shutdown().await;

    // A wrong key: HTTP 401, the error response (said by the same failing voice: nothing to hear,
    // but the subtitles come and the turn ends).
    let mock = MockOpenAi::start(llm_script()).await?;
    let entry = Entry::tts(format!(
        "type: siliconflow\naccess_token: sk-wrong\nresponse_format: wav\napi_url: \"{}\"",
        vendor.url()
    ));
    let server = start_server(&mock, &[entry]).await?;
    let mut device = server.device("aa:bb:cc:0f:01:02", 1).await?;
    let refused = typed(&mut device, "hello").await?;
    assert_eq!(refused.sentences, [REPLY_SENTENCE, ERROR_SENTENCES[0], ERROR_SENTENCES[1]]);
    assert!(vendor.events.count("refused") >= 1);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpt_sovits_v2_streams_and_v3_speaks_and_both_survive_a_failed_synthesis() -> anyhow::Result<()> {
    let vendor = GptSovitsMock::start(Timing::new(Duration::from_millis(150), 1.0), FORBIDDEN, true).await?;
    let mock = MockOpenAi::start(llm_script()).await?;
    let entry = Entry::tts(format!(
        "type: gpt_sovits_v2\nurl: \"{}\"\noutput_dir: tmp/\ntext_lang: \"auto\"\nref_audio_path: \"demo.wav\"\n\
         prompt_text: \"\"\nprompt_lang: \"zh\"\ntop_k: 5\ntop_p: 1\ntemperature: 1\ntext_split_method: \"cut0\"\n\
         batch_size: 1\nbatch_threshold: 0.75\nsplit_bucket: true\nreturn_fragment: false\nspeed_factor: 1.0\n\
         streaming_mode: true\nseed: -1\nparallel_infer: true\nrepetition_penalty: 1.35\naux_ref_audio_paths: []",
        vendor.url("/tts")
    ));
    let server = start_server(&mock, &[entry]).await?;
    let reply = check_tts(&server, &mock, "aa:bb:cc:0f:02:01", "gpt_sovits_v2").await?;
    first_audio_before_synthesis_ended(&reply, &vendor.events, "gpt_sovits_v2");
    let request = vendor.requests.lock().map(|r| r[0].clone()).unwrap_or_default();
    assert_eq!(
        (request["ref_audio_path"].as_str(), request["streaming_mode"].as_bool()),
        (Some("demo.wav"), Some(true))
    );
    server.server.shutdown().await;

    // v3 (`api.py`: GET, a whole WAV per sentence).
    let mock = MockOpenAi::start(llm_script()).await?;
    let entry = Entry::tts(format!(
        "type: gpt_sovits_v3\nurl: \"{}\"\noutput_dir: tmp/\ntext_language: \"auto\"\nrefer_wav_path: \"caixukun.wav\"\n\
         prompt_language: \"zh\"\nprompt_text: \"\"\ntop_k: 15\ntop_p: 1.0\ntemperature: 1.0\ncut_punc: \"\"\nspeed: 1.0\n\
         inp_refs: []\nsample_steps: 32\nif_sr: false",
        vendor.url("")
    ));
    let server = start_server(&mock, &[entry]).await?;
    check_tts(&server, &mock, "aa:bb:cc:0f:02:02", "gpt_sovits_v3").await?;
    let requests = vendor.requests.lock().map(|r| r.clone()).unwrap_or_default();
    let v3 = requests.iter().find(|r| r.get("text_language").is_some()).expect("a v3 request");
    assert_eq!(
        (v3["refer_wav_path"].as_str(), v3["if_sr"].as_str(), v3["top_p"].as_str()),
        (Some("caixukun.wav"), Some("False"), Some("1.0"))
    );
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fishspeech_streams_with_its_references_and_survives_a_failed_synthesis() -> anyhow::Result<()> {
    let vendor =
        FishSpeechMock::start(Some("fish-key"), Timing::new(Duration::from_millis(150), 1.0), FORBIDDEN).await?;
    let mock = MockOpenAi::start(llm_script()).await?;
    let dir = tempfile::tempdir()?;
    let reference = dir.path().join("voice.wav");
    std::fs::write(&reference, b"RIFF....WAVE reference audio")?;
    let entry = Entry::tts(format!(
        "type: fishspeech\noutput_dir: tmp/\nresponse_format: wav\nreference_id: null\n\
         reference_audio: [\"{}\",]\nreference_text: [\"哈啰啊，我是小智啦\",]\nnormalize: true\nmax_new_tokens: 1024\n\
         chunk_length: 200\ntop_p: 0.7\nrepetition_penalty: 1.2\ntemperature: 0.7\nstreaming: true\n\
         use_memory_cache: \"on\"\nseed: null\nchannels: 1\nrate: 44100\napi_key: \"fish-key\"\napi_url: \"{}\"",
        reference.display(),
        vendor.url()
    ));
    let server = start_server(&mock, &[entry]).await?;
    let reply = check_tts(&server, &mock, "aa:bb:cc:0f:03:01", "fishspeech").await?;
    first_audio_before_synthesis_ended(&reply, &vendor.events, "fishspeech");
    let request = vendor.requests.lock().map(|r| r[0].clone()).unwrap_or_default();
    assert_eq!(request["references"][0]["text"], "哈啰啊，我是小智啦");
    assert_eq!(request["references"][0]["audio"], "UklGRi4uLi5XQVZFIHJlZmVyZW5jZSBhdWRpbw==");
    assert_eq!(request["streaming"], true);
    server.server.shutdown().await;

    // Without the server's key: HTTP 401 for every sentence; the turn still ends.
    let mock = MockOpenAi::start(llm_script()).await?;
    let entry = Entry::tts(format!("type: fishspeech\napi_url: \"{}\"", vendor.url()));
    let server = start_server(&mock, &[entry]).await?;
    let mut device = server.device("aa:bb:cc:0f:03:02", 1).await?;
    let refused = typed(&mut device, "hello").await?;
    assert_eq!(refused.sentences, [REPLY_SENTENCE, ERROR_SENTENCES[0], ERROR_SENTENCES[1]]);
    assert!(vendor.events.count("refused") >= 1);
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}
