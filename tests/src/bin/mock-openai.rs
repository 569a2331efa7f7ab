//! Runs the test suite's OpenAI-compatible mock (ASR, streaming LLM, espeak-ng TTS) on a fixed
//! port, so the server and the simulator can be tried by hand without any API key:
//!
//! ```sh
//! cargo run -p xiaozhi-e2e --bin mock-openai -- 9000 > data/.config.yaml
//! ```
//!
//! It prints the `data/.config.yaml` that points the server at it, then serves until Ctrl-C.
//! `--first-token-ms N` and `--chunk-ms N` make the LLM slower (for `xiaozhi-server bench`):
//!
//! ```sh
//! cargo run -p xiaozhi-e2e --bin mock-openai -- 9000 --first-token-ms 300 > data/.config.yaml
//! ```
//!
//! `--bind IP` listens on another address than 127.0.0.1 (`0.0.0.0` in a container, as
//! `compose/test-offline.sh` runs it). `--tool TRIGGER=NAME` replaces the volume tool rule: a
//! user message containing TRIGGER makes the model call the tool NAME (no arguments) and then say
//! `The tool says: <its result>`.
//!
//! Realistic provider timing, for latency figures (`xiaozhi-server bench`):
//!
//! | Flag | What |
//! |---|---|
//! | `--asr-ms N` | the transcription answers N ms after the upload (finalisation) |
//! | `--first-token-ms N` | the LLM's first token after N ms |
//! | `--tokens-per-second N` | then N tokens a second (`--chunk-ms N`: N ms between tokens) |
//! | `--tts-first-byte-ms N` | speech starts N ms after the request |
//! | `--tts-rtf X` | producing 1 s of speech takes X s |
//! | `--tts-stream` | speech streams in 100 ms pieces (else whole, at the end) |
//! | `--tts-format F` | `wav` (default), `pcm`, `opus` (Ogg Opus, 24 kHz / 60 ms), or `custom` (a `custom` TTS entry) |
//! | `--reply TEXT` | the assistant's answer |
//!
//! ```sh
//! mock-openai 9000 --asr-ms 300 --first-token-ms 400 --tokens-per-second 30 \
//!   --tts-first-byte-ms 250 --tts-rtf 0.3 --tts-stream > data/.config.yaml
//! ```

use xiaozhi_e2e::mock::{MockOpenAi, MockScript};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> anyhow::Result<Option<&String>> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(Some(args.get(i + 1).ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?)),
            None => Ok(None),
        }
    };
    let millis = |name: &str| -> anyhow::Result<u64> { Ok(value(name)?.map(|v| v.parse()).transpose()?.unwrap_or(0)) };
    let port: u16 = args.first().filter(|a| !a.starts_with("--")).map(|p| p.parse()).transpose()?.unwrap_or(9000);
    let ip: std::net::IpAddr = value("--bind")?.map(|v| v.parse()).transpose()?.unwrap_or([127, 0, 0, 1].into());
    let (first, chunk) = (millis("--first-token-ms")?, millis("--chunk-ms")?);
    let number =
        |name: &str| -> anyhow::Result<f64> { Ok(value(name)?.map(|v| v.parse()).transpose()?.unwrap_or(0.0)) };
    let ms = std::time::Duration::from_millis;
    let reply =
        value("--reply")?.cloned().unwrap_or_else(|| "😊 It is sunny and warm today. A good day for a walk!".into());
    let mut script = MockScript::default()
        .latency(ms(first), ms(chunk))
        .transcript("What is the weather like today?")
        .reply(reply)
        .asr_delay(ms(millis("--asr-ms")?))
        .tts_timing(ms(millis("--tts-first-byte-ms")?), number("--tts-rtf")?, args.iter().any(|a| a == "--tts-stream"));
    let tokens_per_second = number("--tokens-per-second")?;
    if tokens_per_second > 0.0 {
        script = script.tokens(ms(first), tokens_per_second);
    }
    let tts_format = value("--tts-format")?.cloned().unwrap_or_else(|| "wav".into());
    let script = match value("--tool")? {
        Some(rule) => {
            let (trigger, name) =
                rule.split_once('=').ok_or_else(|| anyhow::anyhow!("--tool wants TRIGGER=NAME, got {rule:?}"))?;
            script.tool(trigger, name, serde_json::json!({}), "The tool says: {tool}")
        }
        None => script.tool(
            "volume",
            "self_audio_speaker_set_volume",
            serde_json::json!({"volume": 30}),
            "😊 Done, the volume is now 30.",
        ),
    };
    // The reply's sentences (as the server cuts them) and the error phrase are synthesized now,
    // so that the speech endpoint answers with the scripted timing, not espeak-ng's.
    let mut splitter = xiaozhi_server::text::SentenceSplitter::new();
    let mut sentences = splitter.push(&script.reply);
    sentences.extend(splitter.finish());
    let mock = MockOpenAi::start_at((ip, port).into(), script).await?;
    let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
    mock.warm_tts(&sentences).await?;
    println!("# Providers: the mock OpenAI-compatible server on {}", mock.base_url());
    print!("{}", mock.config_override_yaml_with_tts(&tts_format));
    eprintln!("mock providers listening on {} (Ctrl-C stops)", mock.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
