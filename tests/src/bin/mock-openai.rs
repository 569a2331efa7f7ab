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

use xiaozhi_e2e::mock::{MockOpenAi, MockScript};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| -> anyhow::Result<u64> {
        match args.iter().position(|a| a == name) {
            Some(i) => Ok(args.get(i + 1).ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?.parse()?),
            None => Ok(0),
        }
    };
    let port: u16 = args.first().filter(|a| !a.starts_with("--")).map(|p| p.parse()).transpose()?.unwrap_or(9000);
    let (first, chunk) = (flag("--first-token-ms")?, flag("--chunk-ms")?);
    let script = MockScript::default()
        .latency(std::time::Duration::from_millis(first), std::time::Duration::from_millis(chunk))
        .transcript("What is the weather like today?")
        .reply("😊 It is sunny and warm today. A good day for a walk!")
        .tool(
            "volume",
            "self_audio_speaker_set_volume",
            serde_json::json!({"volume": 30}),
            "😊 Done, the volume is now 30.",
        );
    let mock = MockOpenAi::start_on(port, script).await?;
    println!("# Providers: the mock OpenAI-compatible server on {}", mock.base_url());
    print!("{}", mock.config_override_yaml());
    eprintln!("mock providers listening on {} (Ctrl-C stops)", mock.base_url());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
