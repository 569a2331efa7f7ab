//! `xiaozhi-server test-provider <KIND>.<name>`: one short request against a configured provider
//! entry (selected or not), with the latency to its first result and the outcome, so that keys and
//! endpoints are checked before devices are pointed at them (the Python project's performance
//! tester, for one entry).
//!
//! - `ASR.<name>`: a spoken sentence (a WAV file given with `--wav`, else the test text spoken by
//!   espeak-ng) is fed as a device would, in real time, 60 ms at a time; the latency is from the
//!   end of the audio to the final text.
//! - `LLM.<name>`: one user message; latency to the first streamed text, and the whole answer.
//! - `TTS.<name>`: one sentence; latency to the first audio, the audio's length and the real-time
//!   factor of the whole synthesis.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;

use crate::asr::{self, ASR_SAMPLE_RATE};
use crate::config::{Config, ConfigSource};
use crate::llm::{self, ChatMessage, LlmDelta, Role};
use crate::tts;

/// The command line of `test-provider`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestProviderArgs {
    /// The entry to test: `ASR.<name>`, `LLM.<name>` or `TTS.<name>` (e.g. `TTS.EdgeTTS`).
    pub entry: String,
    /// What is said to the LLM, spoken by the TTS, or spoken to the ASR (default: a short Chinese
    /// or English sentence).
    #[arg(long)]
    pub text: Option<String>,
    /// For ASR: a WAV file (16-bit mono, any rate) to recognise instead of the spoken test text.
    #[arg(long)]
    pub wav: Option<PathBuf>,
    /// Longest the request may take, in seconds.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// The test text when none is given.
const DEFAULT_TEXT: &str = "你好，请用一句话介绍一下你自己。";

/// How often audio is pushed to a recognizer, as a device sends it.
const PUSH_MS: u64 = 60;

/// Runs the test and prints its outcome; an error when the provider failed.
pub async fn run(source: &ConfigSource, args: TestProviderArgs) -> anyhow::Result<()> {
    let Some((kind, name)) = args.entry.split_once('.') else {
        bail!("name the entry as KIND.name, e.g. ASR.DoubaoStreamASR, LLM.ChatGLMLLM or TTS.EdgeTTS");
    };
    let kind = match kind.to_ascii_uppercase().as_str() {
        "ASR" => "ASR",
        "LLM" => "LLM",
        "TTS" => "TTS",
        other => bail!("{other} is not a provider kind that can be tested (ASR, LLM or TTS)"),
    };
    let loaded = crate::config::load::load_selecting(source, kind, name)?;
    for warning in loaded.warnings.iter().filter(|w| w.contains(&format!("{kind}.{name}."))) {
        eprintln!("warning: {warning}");
    }
    let config = loaded.config;
    let text = args.text.clone().unwrap_or_else(|| DEFAULT_TEXT.to_owned());
    let timeout = Duration::from_secs(args.timeout.max(1));
    println!("testing {kind}.{name} ({})", describe(&config, kind));
    let outcome = tokio::time::timeout(timeout, async {
        match kind {
            "ASR" => test_asr(&config, &text, args.wav.as_deref()).await,
            "LLM" => test_llm(&config, &text).await,
            _ => test_tts(&config, &text).await,
        }
    })
    .await;
    match outcome {
        Ok(Ok(())) => {
            println!("result: OK");
            Ok(())
        }
        Ok(Err(e)) => {
            println!("result: FAILED: {e:#}");
            bail!("{kind}.{name} failed")
        }
        Err(_) => {
            println!("result: FAILED: no answer within {} s", timeout.as_secs());
            bail!("{kind}.{name} did not answer within {} s", timeout.as_secs())
        }
    }
}

/// The resolved entry's type and settings (no secrets).
fn describe(config: &Config, kind: &str) -> String {
    let (type_name, about) = match kind {
        "ASR" => config.providers.asr.describe(),
        "LLM" => config.providers.llm.describe(),
        _ => config.providers.tts.describe(),
    };
    format!("type {type_name}: {about}")
}

/// Local models need ONNX Runtime and load for a while: off the async threads.
async fn build<T: ?Sized + Send + Sync + 'static>(
    config: &Config,
    make: impl FnOnce(&Config) -> Result<Arc<T>, crate::remote::ProviderError> + Send + 'static,
) -> anyhow::Result<Arc<T>> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        let library = config.onnxruntime_path();
        if library.is_file() {
            crate::onnx::init(&library).with_context(|| format!("ONNX Runtime ({})", library.display()))?;
        }
        make(&config).map_err(anyhow::Error::from)
    })
    .await
    .context("the provider build panicked")?
}

async fn test_asr(config: &Config, text: &str, wav: Option<&Path>) -> anyhow::Result<()> {
    let pcm = match wav {
        Some(path) => read_wav(path)?,
        None => espeak(text, &config.providers.tts)?,
    };
    let asr = build(config, |c| asr::build(&c.providers.asr)).await?;
    println!("audio: {} ms", pcm.len() as u64 * 1000 / u64::from(ASR_SAMPLE_RATE));
    let mut recognition = asr::start(&asr).await?;
    let step = (ASR_SAMPLE_RATE as u64 * PUSH_MS / 1000) as usize;
    let mut ticker = tokio::time::interval(Duration::from_millis(PUSH_MS));
    for chunk in pcm.chunks(step) {
        ticker.tick().await;
        recognition.push(chunk).await?;
    }
    let end = Instant::now();
    let heard = recognition.finish().await?;
    println!("recognized: {heard:?}");
    println!("latency: {} ms from the end of the audio to the final text", end.elapsed().as_millis());
    if heard.trim().is_empty() {
        bail!("the recognizer heard no words");
    }
    Ok(())
}

async fn test_llm(config: &Config, text: &str) -> anyhow::Result<()> {
    let llm = build(config, |c| llm::build(&c.providers.llm)).await?;
    let messages = [ChatMessage::new(Role::System, config.prompt.clone()), ChatMessage::new(Role::User, text)];
    let start = Instant::now();
    let mut stream = llm.stream(&messages, &[]).await?;
    let mut first = None;
    let mut answer = String::new();
    while let Some(delta) = stream.next().await {
        match delta? {
            LlmDelta::Text(piece) => {
                if first.is_none() && !piece.trim().is_empty() {
                    first = Some(start.elapsed());
                }
                answer.push_str(&piece);
            }
            LlmDelta::ToolCalls(calls) => println!("tool calls: {calls:?}"),
        }
    }
    println!("answer: {}", answer.trim());
    match first {
        Some(first) => println!(
            "latency: {} ms to the first text, {} ms to the whole answer",
            first.as_millis(),
            start.elapsed().as_millis()
        ),
        None => bail!("the model answered no text"),
    }
    Ok(())
}

async fn test_tts(config: &Config, text: &str) -> anyhow::Result<()> {
    let tts = build(config, |c| tts::build(&c.providers.tts)).await?;
    let start = Instant::now();
    let mut stream = tts.speak(text).await?;
    let mut first = None;
    let mut audio_ms = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        first.get_or_insert_with(|| start.elapsed());
        audio_ms += chunk.duration_ms();
    }
    let total = start.elapsed();
    let Some(first) = first else { bail!("the synthesizer answered no audio") };
    println!("audio: {audio_ms} ms");
    println!(
        "latency: {} ms to the first audio, {} ms for the whole sentence (real-time factor {:.2})",
        first.as_millis(),
        total.as_millis(),
        total.as_secs_f64() * 1000.0 / audio_ms.max(1) as f64
    );
    Ok(())
}

/// A WAV file as 16 kHz mono PCM.
fn read_wav(path: &Path) -> anyhow::Result<Vec<i16>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let clip = crate::audio::decode::decode_audio(&bytes, crate::audio::decode::AudioFormat::Wav)
        .with_context(|| format!("{} is not a WAV file this server reads", path.display()))?;
    Ok(crate::audio::resample::resample(&clip.samples, clip.sample_rate, ASR_SAMPLE_RATE))
}

/// `text` spoken by espeak-ng (the program the Piper voice uses, else `espeak-ng`), 16 kHz mono,
/// with half a second of silence after it, as a device sends the end of an utterance.
fn espeak(text: &str, tts: &crate::config::TtsSpec) -> anyhow::Result<Vec<i16>> {
    let program = match tts {
        crate::config::TtsSpec::Piper(piper) if !piper.espeak.trim().is_empty() => piper.espeak.clone(),
        _ => "espeak-ng".to_owned(),
    };
    let voice = if text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)) { "cmn" } else { "en" };
    let output = std::process::Command::new(&program)
        .args(["-v", voice, "--stdout", text])
        .output()
        .with_context(|| format!("cannot run {program} to speak the test text (pass a recording with --wav)"))?;
    if !output.status.success() {
        bail!("{program} failed: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    let clip = crate::audio::decode::decode_audio(&output.stdout, crate::audio::decode::AudioFormat::Wav)
        .context("espeak-ng's output is not a WAV")?;
    let mut pcm = crate::audio::resample::resample(&clip.samples, clip.sample_rate, ASR_SAMPLE_RATE);
    pcm.extend(std::iter::repeat_n(0, ASR_SAMPLE_RATE as usize / 2));
    Ok(pcm)
}
