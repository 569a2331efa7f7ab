//! `xiaozhi-server bench`: many simulated devices holding spoken conversations with a running
//! server, and what it costs the server.
//!
//! Each device connects (ramped up at `--ramp` per second), then loops `--turns` times: `listen
//! start` (auto), the WAV streamed in real time as 60 ms Opus frames (encoded once, shared by all
//! devices), silence until `tts start`, then the reply until `tts stop`. Measured per turn:
//!
//! - **server-added latency**: first downlink Opus frame − end of the voice in the WAV (the last
//!   sample above the noise floor) − `--silence-ms` (the server's VAD silence window, 500 ms in
//!   the default config): what the server adds beyond waiting for the user to finish;
//! - **late frames**: a reply frame is late when it arrives more than 20 ms after the pacing
//!   clock says it should (the first 5 frames are pre-buffered, then one per frame duration,
//!   counted from the first frame), i.e. when the device's jitter buffer would run thin;
//! - completed and failed turns.
//!
//! With `--pid`, the server's CPU time (`/proc/<pid>/stat`) and RSS (`/proc/<pid>/status`) are
//! read at the start and the end. Only loopback or addresses the operator gives are contacted;
//! the device count and the duration are bounded.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::Value;

use super::cli::TransportArg;
use super::{SimConfig, SimDevice, SimEvent};
use crate::protocol::message::ListenMode;

/// Most devices one bench run may simulate.
pub const MAX_DEVICES: u32 = 20_000;
/// Frames the server sends ahead before pacing (the speaker's pre-buffer).
const PREBUFFER_FRAMES: usize = 5;
/// A frame later than this behind the pacing clock counts as late.
const LATE_BY: Duration = Duration::from_millis(20);
/// Longest wait for a reply to start, and for it to end.
const REPLY_WAIT: Duration = Duration::from_secs(60);

/// Arguments of the `bench` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// WebSocket URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:8000/xiaozhi/v1/")]
    pub server: String,
    /// The utterance every device speaks (a WAV file, any rate; resampled to 16 kHz mono).
    #[arg(long)]
    pub wav: PathBuf,
    /// How many devices.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_DEVICES)))]
    pub devices: u32,
    /// Devices connected per second while ramping up.
    #[arg(long, default_value_t = 50.0)]
    pub ramp: f64,
    /// Turns per device.
    #[arg(long, default_value_t = 3)]
    pub turns: u32,
    /// The server's VAD silence window in ms (`min_silence_duration_ms`), subtracted from the latency.
    #[arg(long, default_value_t = 500)]
    pub silence_ms: u64,
    /// Stop after this many seconds even if turns remain.
    #[arg(long, default_value_t = 600)]
    pub max_seconds: u64,
    /// The server's process id, to report its CPU and memory.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// The devices' transport: `mqtt` asks each device's OTA check (--ota) for its mqtt block
    /// and talks MQTT + UDP, like the firmware.
    #[arg(long, value_enum, default_value_t = TransportArg::Websocket)]
    pub transport: TransportArg,
    /// The OTA URL (needed with --transport mqtt).
    #[arg(long)]
    pub ota: Option<String>,
}

/// One finished turn.
#[derive(Debug, Clone, Default)]
struct TurnStats {
    /// Server-added latency, ms (negative: before the reference).
    latency: Option<f64>,
    frames: usize,
    late: usize,
}

/// What a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Devices simulated.
    pub devices: u32,
    /// Devices that connected.
    pub connected: u32,
    /// Turns with a complete reply.
    pub turns_completed: u64,
    /// Turns that failed (no reply, closed, error).
    pub turns_failed: u64,
    /// Server-added latency percentiles, ms.
    pub latency_ms: Percentiles,
    /// Reply frames received.
    pub frames: u64,
    /// Reply frames later than 20 ms behind the pacing clock.
    pub late_frames: u64,
    /// `late_frames / frames`, percent.
    pub late_percent: f64,
    /// Wall time of the run, s.
    pub seconds: f64,
    /// The server's CPU use over the run, percent of one core (with `--pid`).
    pub server_cpu_percent: Option<f64>,
    /// The server's RSS at the start and the end, MB (with `--pid`).
    pub server_rss_mb: Option<(f64, f64)>,
}

/// p50 / p95 / p99 / max.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

fn percentiles(mut ms: Vec<f64>) -> Percentiles {
    if ms.is_empty() {
        return Percentiles::default();
    }
    ms.sort_by(f64::total_cmp);
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    Percentiles { p50: at(0.5), p95: at(0.95), p99: at(0.99), max: ms[ms.len() - 1] }
}

/// The server process's CPU time so far (user + system, in clock ticks of 1/100 s) and RSS in kB.
fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some((ticks, rss))
}

/// Runs the bench and prints the report.
pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let pcm = super::cli::load_wav_16k(&args.wav)?;
    let voiced = pcm.iter().rposition(|s| s.unsigned_abs() > 300).map_or(0, |i| i + 1);
    if voiced == 0 {
        bail!("{} holds no speech", args.wav.display());
    }
    let voiced_end = Duration::from_millis(voiced as u64 * 1000 / 16_000);
    let report = bench(&args, pcm, voiced_end).await?;
    print_report(&args, &report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn bench(args: &BenchArgs, pcm: Vec<i16>, voiced_end: Duration) -> anyhow::Result<BenchReport> {
    if args.transport == TransportArg::Mqtt && args.ota.is_none() {
        bail!("--transport mqtt needs --ota (each device's credentials come from its OTA check)");
    }
    let usage_before = args.pid.and_then(process_usage);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.max_seconds);
    let silence = Duration::from_millis(args.silence_ms);
    let packets: Arc<Vec<Vec<u8>>> = Arc::new(Vec::new());
    let packets = std::sync::Mutex::new(packets);
    let pcm = Arc::new(pcm);
    let mut tasks = tokio::task::JoinSet::new();
    let gap = Duration::from_secs_f64(1.0 / args.ramp.max(0.1));
    for i in 0..args.devices {
        tokio::time::sleep_until(tokio::time::Instant::from_std(started + gap * i)).await;
        let mut cfg = SimConfig {
            url: args.server.clone(),
            device_id: format!(
                "02:be:{:02x}:{:02x}:{:02x}:{:02x}",
                i >> 24,
                (i >> 16) & 0xff,
                (i >> 8) & 0xff,
                i & 0xff
            ),
            client_id: format!("00000000-0000-4000-8000-{i:012x}"),
            ..SimConfig::default()
        };
        if let (TransportArg::Mqtt, Some(ota)) = (args.transport, &args.ota) {
            let answer = super::cli::ota_fetch(ota, &cfg).await;
            if let Err(e) = answer.and_then(|body| super::cli::apply_ota(&body, &mut cfg, TransportArg::Mqtt, false)) {
                tracing::warn!("device {i}: no MQTT settings from the OTA check: {e:#}");
                continue;
            }
        }
        let device = match SimDevice::connect(cfg).await {
            Ok(device) => device,
            Err(e) => {
                tracing::warn!("device {i} did not connect: {e:#}");
                continue;
            }
        };
        // The utterance is encoded once, by the first device, and shared.
        let shared = {
            let mut slot = packets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if slot.is_empty() {
                *slot = Arc::new(device.encode_speech(&pcm)?);
            }
            Arc::clone(&slot)
        };
        let turns = args.turns;
        tasks.spawn(async move { device_loop(device, shared, turns, voiced_end, silence, deadline).await });
    }
    let mut connected = 0;
    let mut stats = Vec::new();
    let mut failed = 0u64;
    while let Some(joined) = tasks.join_next().await {
        connected += 1;
        let (done, errors) = joined.unwrap_or_else(|_| (Vec::new(), 1));
        stats.extend(done);
        failed += errors;
    }
    let seconds = started.elapsed().as_secs_f64();
    let usage_after = args.pid.and_then(process_usage);
    let frames: u64 = stats.iter().map(|s| s.frames as u64).sum();
    let late: u64 = stats.iter().map(|s| s.late as u64).sum();
    let latencies = stats.iter().filter_map(|s| s.latency).collect();
    let (cpu, rss) = match (usage_before, usage_after) {
        (Some((t0, r0)), Some((t1, r1))) => {
            (Some((t1.saturating_sub(t0)) as f64 / seconds.max(1e-9)), Some((r0 as f64 / 1024.0, r1 as f64 / 1024.0)))
        }
        _ => (None, None),
    };
    Ok(BenchReport {
        devices: args.devices,
        connected,
        turns_completed: stats.len() as u64,
        turns_failed: failed,
        latency_ms: percentiles(latencies),
        frames,
        late_frames: late,
        late_percent: if frames == 0 { 0.0 } else { late as f64 * 100.0 / frames as f64 },
        seconds,
        server_cpu_percent: cpu,
        server_rss_mb: rss,
    })
}

/// One device's turns: the stats of the completed ones and the number that failed.
async fn device_loop(
    mut device: SimDevice,
    packets: Arc<Vec<Vec<u8>>>,
    turns: u32,
    voiced_end: Duration,
    silence: Duration,
    deadline: Instant,
) -> (Vec<TurnStats>, u64) {
    let mut done = Vec::new();
    let mut failed = 0;
    let frame_ms = u64::from(device.downlink_frame_ms().max(1));
    for _ in 0..turns {
        if Instant::now() >= deadline {
            break;
        }
        match one_turn(&mut device, &packets, voiced_end, silence, Duration::from_millis(frame_ms)).await {
            Ok(stats) => done.push(stats),
            Err(e) => {
                tracing::debug!("turn failed: {e:#}");
                failed += 1;
                if device.next_event(Duration::ZERO).await.is_some_and(|(_, e)| matches!(e, SimEvent::Closed(_))) {
                    break;
                }
            }
        }
    }
    device.close_abruptly().await;
    (done, failed)
}

async fn one_turn(
    device: &mut SimDevice,
    packets: &[Vec<u8>],
    voiced_end: Duration,
    silence: Duration,
    frame: Duration,
) -> anyhow::Result<TurnStats> {
    device.listen_start(ListenMode::Auto).await?;
    let sent_at = Instant::now();
    device.stream_packets(packets, true).await?;
    if !device.stream_silence_until_tts(REPLY_WAIT).await? {
        bail!("no reply started");
    }
    let voice_done = sent_at + voiced_end + silence;
    let mut arrivals = Vec::new();
    let until = tokio::time::Instant::now() + REPLY_WAIT;
    loop {
        let left = until.saturating_duration_since(tokio::time::Instant::now());
        let Some((at, event)) = device.next_event(left).await else { bail!("no tts stop") };
        match event {
            SimEvent::Audio { .. } => arrivals.push(at),
            SimEvent::Json(v) if is_tts_stop(&v) => break,
            SimEvent::Closed(_) => bail!("closed mid-reply"),
            SimEvent::Json(_) => {}
        }
    }
    let Some(&first) = arrivals.first() else { bail!("a reply without audio") };
    let late = arrivals
        .iter()
        .enumerate()
        .filter(|(k, at)| {
            let due = first + frame * u32::try_from(k.saturating_sub(PREBUFFER_FRAMES - 1)).unwrap_or(u32::MAX);
            **at > due + LATE_BY
        })
        .count();
    // Signed: a VAD that decides before the end of the bench's own reference (its last sample
    // above 300) plus the silence window gives a negative figure, not a clipped zero.
    let latency = if first >= voice_done {
        first.duration_since(voice_done).as_secs_f64() * 1000.0
    } else {
        -(voice_done.duration_since(first).as_secs_f64() * 1000.0)
    };
    Ok(TurnStats { latency: Some(latency), frames: arrivals.len(), late })
}

fn is_tts_stop(v: &Value) -> bool {
    v.get("type").and_then(Value::as_str) == Some("tts") && v.get("state").and_then(Value::as_str) == Some("stop")
}

fn print_report(args: &BenchArgs, r: &BenchReport) {
    let row = |what: &str, value: String| println!("| {what:<44} | {value:>28} |");
    println!("| {:<44} | {:>28} |", "bench", "result");
    println!("|{}|{}|", "-".repeat(46), "-".repeat(30));
    row("transport", format!("{:?}", args.transport).to_lowercase());
    row("devices connected / asked", format!("{} / {}", r.connected, r.devices));
    row("turns completed / failed", format!("{} / {}", r.turns_completed, r.turns_failed));
    let l = &r.latency_ms;
    row(
        &format!("server-added latency p50/p95/p99 (−{} ms VAD)", args.silence_ms),
        format!("{:.0} / {:.0} / {:.0} ms", l.p50, l.p95, l.p99),
    );
    row("latency max", format!("{:.0} ms", l.max));
    row(
        "reply frames / late (>20 ms behind pacing)",
        format!("{} / {} ({:.2} %)", r.frames, r.late_frames, r.late_percent),
    );
    if let Some(cpu) = r.server_cpu_percent {
        row("server CPU (100 % = one core)", format!("{cpu:.0} %"));
    }
    if let Some((start, end)) = r.server_rss_mb {
        row("server RSS start → end", format!("{start:.1} → {end:.1} MB"));
    }
    row("wall time", format!("{:.1} s", r.seconds));
}
