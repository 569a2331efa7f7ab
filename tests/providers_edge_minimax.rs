//! End-to-end tests of the `edge` and `minimax_httpstream` TTS providers against their vendor
//! mocks ([`xiaozhi_e2e::vendors::edge`], [`xiaozhi_e2e::vendors::minimax`]): a typed turn is
//! heard as real speech, the first audio reaches the device before the vendor has sent the whole
//! sentence, and a vendor error frame is answered with `system_error_response` on the same
//! session, which then serves the next turn.

use std::time::Duration;

use xiaozhi_e2e::harness::TestServer;
use xiaozhi_e2e::mock::{MockOpenAi, MockScript};
use xiaozhi_e2e::providers::{Entry, REPLY_WAIT, providers_yaml};
use xiaozhi_e2e::vendors::edge::EdgeMock;
use xiaozhi_e2e::vendors::minimax::MinimaxMock;
use xiaozhi_e2e::vendors::{Events, Timing, is_speech};

const ERROR_RESPONSE: &str = "system_error_response: \"Sorry, something went wrong.\"\n";
const ERROR_SENTENCES: [&str; 2] = ["Sorry", "something went wrong"];
const SENTENCE: &str = "Hello there this whole sentence is spoken by the vendor voice";

/// A vendor synthesizing at half real time after 100 ms, in 100 ms pieces.
fn vendor_pace() -> Timing {
    Timing::new(Duration::from_millis(100), 0.5)
}

/// The three checks on one server whose TTS is the vendor mock: a typed turn heard as speech and
/// streamed (first audio before the vendor's last audio event `audio_event`), then a sentence the
/// vendor fails (`fail` sets the marker) answered with the error response on the same device,
/// which then hears the next turn.
async fn speaks_streams_and_recovers(
    server: &TestServer,
    llm: &MockOpenAi,
    events: &Events,
    audio_event: &str,
    error_event: &str,
    fail: impl Fn(&str),
    device_id: &str,
) -> anyhow::Result<()> {
    let mut device = server.device(device_id, 1).await?;

    // (a) A typed turn: the device hears the vendor's speech.
    llm.set_script(MockScript::default().reply(format!("🙂 {SENTENCE}.")));
    device.detect("say something").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    anyhow::ensure!(reply.sentences == [SENTENCE], "unexpected reply: {}", reply.summary());
    anyhow::ensure!(reply.decode_errors == 0, "{} undecodable packets", reply.decode_errors);
    anyhow::ensure!(reply.audio_ms() > 1_500, "only {} ms heard: {}", reply.audio_ms(), reply.summary());
    anyhow::ensure!(is_speech(&reply.pcm, reply.sample_rate, 1_500), "the device did not hear speech");

    // (c) Streaming: the first audio arrived before the vendor sent the sentence's last audio.
    let first_heard = reply.frames.first().map(|(at, _)| *at).ok_or_else(|| anyhow::anyhow!("no audio"))?;
    let last_sent = events.last(audio_event).ok_or_else(|| anyhow::anyhow!("the vendor sent no audio"))?;
    anyhow::ensure!(
        first_heard < last_sent,
        "the first audio came {:?} after the vendor's last audio",
        first_heard.duration_since(last_sent)
    );
    anyhow::ensure!(
        last_sent.duration_since(first_heard) > Duration::from_millis(500),
        "the first audio came only {:?} before the vendor's last audio",
        last_sent.duration_since(first_heard)
    );

    // (b) The vendor answers an error frame: the error response is heard, on the same session.
    fail("Broken");
    llm.set_script(MockScript::default().reply("🙂 Broken voice here."));
    device.detect("say it again").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    anyhow::ensure!(events.count(error_event) >= 1, "the vendor answered no error");
    let mut expected = vec!["Broken voice here"];
    expected.extend(ERROR_SENTENCES);
    anyhow::ensure!(reply.sentences == expected, "unexpected reply: {}", reply.summary());
    anyhow::ensure!(reply.audio_ms() > 300, "the error response was not heard: {}", reply.summary());

    // The same session serves the next turn.
    llm.set_script(MockScript::default().reply("🙂 All good again."));
    device.detect("are you there").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    anyhow::ensure!(reply.sentences == ["All good again"], "unexpected reply: {}", reply.summary());
    anyhow::ensure!(reply.audio_ms() > 300, "the next turn was not heard: {}", reply.summary());
    device.close_abruptly().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_speaks_streams_and_recovers_from_an_error_frame() -> anyhow::Result<()> {
    let edge = EdgeMock::start(vendor_pace()).await?;
    let llm = MockOpenAi::start(MockScript::default()).await?;
    // The Python entry's keys, and the mock's URL.
    let entry =
        Entry::tts(format!("type: edge\nvoice: zh-CN-XiaoxiaoNeural\noutput_dir: tmp/\nurl: \"{}\"", edge.url()));
    let server =
        TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(&llm, &[entry]))).await?;
    let events = edge.events.clone();
    speaks_streams_and_recovers(
        &server,
        &llm,
        &events,
        "edge_audio",
        "edge_error",
        |marker| edge.fail_sentences_with(marker),
        "aa:bb:cc:0e:d9:01",
    )
    .await?;
    anyhow::ensure!(edge.texts().iter().any(|t| t.contains(SENTENCE)), "{:?}", edge.texts());
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimax_speaks_streams_and_recovers_from_an_error_event() -> anyhow::Result<()> {
    let minimax = MinimaxMock::start("1234567890", "mm-test-key", vendor_pace()).await?;
    let llm = MockOpenAi::start(MockScript::default()).await?;
    // The Python entry's keys (the group id written as a number), and the mock's URL. The
    // default audio_setting asks for MP3 at 32 kHz, decoded frame by frame.
    let entry = Entry::tts(format!(
        "type: minimax_httpstream\noutput_dir: tmp/\ngroup_id: 1234567890\napi_key: mm-test-key\n\
         model: speech-01-turbo\nvoice_id: female-shaonv\napi_url: \"{}\"",
        minimax.url()
    ));
    let server =
        TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(&llm, &[entry]))).await?;
    let events = minimax.events.clone();
    speaks_streams_and_recovers(
        &server,
        &llm,
        &events,
        "minimax_audio",
        "minimax_error",
        |marker| minimax.fail_sentences_with(marker),
        "aa:bb:cc:0e:d9:02",
    )
    .await?;
    let requests = minimax.requests();
    let request = requests.iter().find(|r| r["text"].as_str().is_some_and(|t| t.contains(SENTENCE)));
    let request = request.ok_or_else(|| anyhow::anyhow!("the sentence never reached MiniMax"))?;
    anyhow::ensure!(request["stream"] == true && request["voice_setting"]["voice_id"] == "female-shaonv");
    anyhow::ensure!(request["audio_setting"]["format"] == "mp3" && request["model"] == "speech-01-turbo");
    server.server.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimax_with_a_wrong_key_answers_the_error_response() -> anyhow::Result<()> {
    let minimax = MinimaxMock::start("1234567890", "mm-test-key", Timing::default()).await?;
    let llm = MockOpenAi::start(MockScript::default().reply("🙂 Nobody hears this.")).await?;
    let entry = Entry::tts(format!(
        "type: minimax_httpstream\ngroup_id: \"1234567890\"\napi_key: wrong-key\napi_url: \"{}\"",
        minimax.url()
    ));
    let server =
        TestServer::start_with_providers(&format!("{}{ERROR_RESPONSE}", providers_yaml(&llm, &[entry]))).await?;
    let mut device = server.device("aa:bb:cc:0e:d9:03", 1).await?;
    device.detect("hello").await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    // The vendor refuses every sentence (1004), the error response included: shown, not heard.
    let mut expected = vec!["Nobody hears this"];
    expected.extend(ERROR_SENTENCES);
    anyhow::ensure!(reply.sentences == expected, "unexpected reply: {}", reply.summary());
    anyhow::ensure!(minimax.events.count("minimax_request") == 0, "a refused request produced audio");
    device.close_abruptly().await;
    server.server.shutdown().await;
    Ok(())
}

/// The Python server's own entries (v0.9.6 file, placeholders for credentials) and ours load
/// without an unknown key, and build (empty credentials fail only when speaking).
#[test]
fn the_python_entries_load_without_unknown_keys_and_build() -> anyhow::Result<()> {
    use xiaozhi_e2e::harness::repo_root;
    use xiaozhi_server::config::{ConfigSource, load};
    for (name, kind) in [("EdgeTTS", "edge"), ("MinimaxTTSHTTPStream", "minimax_httpstream")] {
        for base in [repo_root().join("tests/assets/python-v0.9.6-config.yaml"), repo_root().join("config.yaml")] {
            let dir = tempfile::tempdir()?;
            std::fs::write(dir.path().join(".config.yaml"), format!("selected_module:\n  TTS: {name}\n"))?;
            let loaded = load(&ConfigSource::new(&base, dir.path()))?;
            let about: Vec<&String> = loaded.warnings.iter().filter(|w| w.contains(&format!(".{name}."))).collect();
            anyhow::ensure!(about.is_empty(), "{}: {about:?}", base.display());
            anyhow::ensure!(loaded.config.providers.tts.describe().0 == kind);
            if let Err(e) = xiaozhi_server::tts::build(&loaded.config.providers.tts) {
                anyhow::bail!("{name} from {} does not build: {e}", base.display());
            }
        }
    }
    Ok(())
}
