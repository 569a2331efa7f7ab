//! What the end-to-end tests of the vendor providers share: a server whose ASR, LLM and TTS are
//! the OpenAI-compatible [`MockOpenAi`] except the entries under test (pointed at a vendor mock
//! from [`crate::vendors`]), and one turn through the device simulator.

use std::time::Duration;

use xiaozhi_server::protocol::message::ListenMode;
use xiaozhi_server::simulator::Reply;

use crate::harness::TestServer;
use crate::mock::MockOpenAi;
use crate::speech::{speech_16k, with_silence};

/// How long a test waits for a whole reply.
pub const REPLY_WAIT: Duration = Duration::from_secs(30);

/// A provider entry under test: its section (`ASR`, `LLM` or `TTS`) and its settings as YAML lines
/// (`type: edge`, `voice: ...`, one per line, not indented). It is selected under the name
/// `Vendor<section>`.
#[derive(Debug, Clone)]
pub struct Entry {
    /// `ASR`, `LLM` or `TTS`.
    pub section: &'static str,
    /// The entry's settings, one `key: value` per line.
    pub yaml: String,
}

impl Entry {
    /// An `ASR` entry.
    pub fn asr(yaml: impl Into<String>) -> Self {
        Self { section: "ASR", yaml: yaml.into() }
    }

    /// An `LLM` entry.
    pub fn llm(yaml: impl Into<String>) -> Self {
        Self { section: "LLM", yaml: yaml.into() }
    }

    /// A `TTS` entry.
    pub fn tts(yaml: impl Into<String>) -> Self {
        Self { section: "TTS", yaml: yaml.into() }
    }
}

/// The providers part of the override: `mock` for every section, except `entries`, which are
/// selected instead (as `VendorASR`, `VendorLLM`, `VendorTTS`).
pub fn providers_yaml(mock: &MockOpenAi, entries: &[Entry]) -> String {
    let base = mock.base_url();
    let mut sections = vec![
        (
            "ASR",
            format!("type: openai\nbase_url: \"{base}/audio/transcriptions\"\nmodel_name: mock-asr\napi_key: test"),
        ),
        ("LLM", format!("type: openai\nbase_url: \"{base}\"\nmodel_name: mock-llm\napi_key: test")),
        (
            "TTS",
            format!(
                "type: openai\napi_url: \"{base}/audio/speech\"\nmodel: mock-tts\nvoice: en\nformat: wav\napi_key: test"
            ),
        ),
    ];
    let mut selected = String::from("selected_module:\n  VAD: SileroVAD\n  Intent: function_call\n  Memory: nomem\n");
    let mut out = String::new();
    for (section, mock_yaml) in &mut sections {
        let (name, yaml) = match entries.iter().find(|e| e.section == *section) {
            Some(entry) => (format!("Vendor{section}"), entry.yaml.clone()),
            None => (format!("Mock{section}"), mock_yaml.clone()),
        };
        selected.push_str(&format!("  {section}: {name}\n"));
        out.push_str(&format!("{section}:\n  {name}:\n"));
        for line in yaml.lines().filter(|l| !l.trim().is_empty()) {
            out.push_str(&format!("    {line}\n"));
        }
    }
    selected + &out
}

/// Starts a server with [`providers_yaml`].
pub async fn server_with(mock: &MockOpenAi, entries: &[Entry]) -> anyhow::Result<TestServer> {
    TestServer::start_with_providers(&providers_yaml(mock, entries)).await
}

/// One spoken turn on a new device: it says `question` (espeak-ng, real time, then silence until
/// the end of speech) and collects the reply.
pub async fn spoken_turn(server: &TestServer, device_id: &str, question: &str) -> anyhow::Result<Reply> {
    let mut device = server.device(device_id, 1).await?;
    device.listen_start(ListenMode::Auto).await?;
    let speech = with_silence(&speech_16k(question)?, 300, 1500);
    device.stream_speech(&speech, true).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    device.close_abruptly().await;
    Ok(reply)
}

/// One typed turn on a new device (`listen detect` with `text`, no speech recognition) and its
/// reply.
pub async fn typed_turn(server: &TestServer, device_id: &str, text: &str) -> anyhow::Result<Reply> {
    let mut device = server.device(device_id, 1).await?;
    device.detect(text).await?;
    let reply = device.collect_reply(REPLY_WAIT).await?;
    device.close_abruptly().await;
    Ok(reply)
}
