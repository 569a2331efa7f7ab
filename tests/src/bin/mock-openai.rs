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
    let script = MockScript::default()
        .latency(std::time::Duration::from_millis(first), std::time::Duration::from_millis(chunk))
        .transcript("What is the weather like today?")
        .reply("😊 It is sunny and warm today. A good day for a walk!");
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
    let mock = MockOpenAi::start_at((ip, port).into(), script).await?;
    println!("# Providers: the mock OpenAI-compatible server on {}", mock.base_url());
    print!("{}", mock.config_override_yaml());
    eprintln!("mock providers listening on {} (Ctrl-C stops)", mock.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
