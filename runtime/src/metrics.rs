//! Prometheus metrics of one server, served as OpenMetrics text on `GET /metrics` (HTTP port).
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `xiaozhi_sessions` | gauge: device sessions open now | |
//! | `xiaozhi_sessions_opened_total` | counter: sessions since start | |
//! | `xiaozhi_turns_active` | gauge: turns running now | |
//! | `xiaozhi_turns_total` | counter | `outcome`: `answered`, `cancelled`, `heard_nothing` |
//! | `xiaozhi_turn_first_audio_seconds` | histogram: turn start (utterance complete or text received) → first reply audio handed to the speaker | |
//! | `xiaozhi_provider_errors_total` | counter | `provider`: `asr`, `llm`, `tts` |
//! | `xiaozhi_extension_calls_total` | counter | `extension`, `call` (`tool.call`, …), `outcome`: `ok`, `error`, `trap`, `timeout` |
//! | `xiaozhi_extension_call_seconds` | histogram: one extension call, instantiation included, whatever its outcome | `extension` |
//! | `xiaozhi_mqtt_refused_total` | counter: MQTT connections the built-in endpoint refused | `reason`: `bad_password`, `bad_client_id`, `protocol` (not MQTT 3.1.1, or a first packet that is not CONNECT), `full` (`limits.mqtt_clients`), `no_connect` (no CONNECT within `limits.mqtt_connect_timeout_ms`) |
//! | `xiaozhi_udp_dropped_total` | counter: UDP audio datagrams dropped | `reason`: `short`, `type`, `ssrc`, `length`, `replayed`, `sequence_jump`, `not_audio` (another key), `unknown_ssrc` (no such session), `other_address` (not the address the session learnt), `session_busy` (the session's queue is full) |
//! | `xiaozhi_devices_dropped_total` | counter: connections we gave up on | `reason`: `not_reading` (the queue filled or one write took longer than `limits.write_timeout_ms`), `write_failed` |
//! | `xiaozhi_limits_hit_total` | counter: inputs cut or refused at a limit | `limit`: the `limits` key (`device_tools`, `tool_result_chars`, …) |
//! | `xiaozhi_downlink_frames_total` | counter: downlink Opus frames by how they were made | `path`: `encoded` (PCM encoded here), `passed_through` (a TTS's Opus packet sent as it was) |
//! | `xiaozhi_encoder_complexity_steps_total` | counter: a session's Opus encoder stepped its complexity (down when it fell behind real time, up when back on time) | `direction`: `down`, `up` |
//!
//! One [`Metrics`] per server (not a process global), so that several servers in one test
//! process never count each other's sessions.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How a turn ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TurnLabels {
    /// `answered`, `cancelled` or `heard_nothing`.
    pub outcome: &'static str,
}

/// Which provider failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    /// `asr`, `llm` or `tts`.
    pub provider: &'static str,
}

/// One extension call's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExtensionLabels {
    /// The extension id.
    pub extension: String,
    /// The export called (`tool.call`, `intent.detect`, …).
    pub call: &'static str,
    /// `ok`, `error` (the guest's own error or bad output), `trap` or `timeout`.
    pub outcome: &'static str,
}

/// Which extension a duration is of.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExtensionIdLabels {
    /// The extension id.
    pub extension: String,
}

/// How many recent call durations of one extension are kept for its p50/p99.
pub const EXTENSION_RECENT_CALLS: usize = 1024;

/// One extension's calls since start, and the durations of its last [`EXTENSION_RECENT_CALLS`].
#[derive(Debug, Default)]
struct ExtensionTally {
    ok: u64,
    error: u64,
    trap: u64,
    timeout: u64,
    recent_us: std::collections::VecDeque<u64>,
}

/// What [`Metrics::extension_figures`] reports of one extension.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ExtensionFigures {
    /// Calls since start.
    pub calls: u64,
    /// Calls the guest answered with its own error (or bad output).
    pub errors: u64,
    /// Calls that trapped (a crash, or over its memory cap).
    pub traps: u64,
    /// Calls stopped at their time limit.
    pub timeouts: u64,
    /// Median duration of the last [`EXTENSION_RECENT_CALLS`] calls, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile duration of the last [`EXTENSION_RECENT_CALLS`] calls, ms.
    pub p99_ms: Option<f64>,
}

/// Why a connection was dropped.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    /// `not_reading` or `write_failed`.
    pub reason: &'static str,
}

/// Which limit was hit.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabels {
    /// The `limits` key.
    pub limit: &'static str,
}

/// How a downlink frame was made.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FrameLabels {
    /// `encoded` or `passed_through`.
    pub path: &'static str,
}

/// Which way an encoder's complexity went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepLabels {
    /// `down` or `up`.
    pub direction: &'static str,
}

/// The metrics of one server.
pub struct Metrics {
    registry: Registry,
    /// Device sessions open now.
    pub sessions: Gauge,
    /// Sessions since start.
    pub sessions_total: Counter,
    /// Turns running now.
    pub turns_active: Gauge,
    /// Finished turns by outcome.
    pub turns: Family<TurnLabels, Counter>,
    /// Turn start → first reply audio, seconds.
    pub first_audio: Histogram,
    /// Provider failures.
    pub provider_errors: Family<ProviderLabels, Counter>,
    /// Extension calls by outcome.
    pub extension_calls: Family<ExtensionLabels, Counter>,
    /// Extension call durations, seconds.
    pub extension_call_seconds: Family<ExtensionIdLabels, Histogram>,
    // std Mutex: one short update or read per call, never held across an await. One entry per
    // extension id ever called (the extension folders bound them).
    extension_tallies: std::sync::Mutex<std::collections::HashMap<String, ExtensionTally>>,
    /// Connections we gave up on, by reason.
    pub devices_dropped: Family<DroppedLabels, Counter>,
    /// Inputs cut or refused at a limit, by limit.
    pub limits_hit: Family<LimitLabels, Counter>,
    /// MQTT connections refused by the built-in endpoint, by reason.
    pub mqtt_refused: Family<DroppedLabels, Counter>,
    /// UDP audio datagrams dropped, by reason.
    pub udp_dropped: Family<DroppedLabels, Counter>,
    /// Encoder complexity steps, by direction.
    pub encoder_steps: Family<StepLabels, Counter>,
    /// Downlink frames by how they were made.
    pub downlink_frames: Family<FrameLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").field("sessions", &self.sessions.get()).finish()
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let sessions = Gauge::default();
        registry.register("xiaozhi_sessions", "Device sessions open now", sessions.clone());
        let sessions_total = Counter::default();
        registry.register("xiaozhi_sessions_opened", "Device sessions since start", sessions_total.clone());
        let turns_active = Gauge::default();
        registry.register("xiaozhi_turns_active", "Turns running now", turns_active.clone());
        let turns = Family::<TurnLabels, Counter>::default();
        registry.register("xiaozhi_turns", "Finished turns by outcome", turns.clone());
        // 5 ms … ~41 s.
        let first_audio = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "xiaozhi_turn_first_audio_seconds",
            "Turn start (utterance complete or text received) to the first reply audio",
            first_audio.clone(),
        );
        let provider_errors = Family::<ProviderLabels, Counter>::default();
        registry.register("xiaozhi_provider_errors", "Provider failures by provider", provider_errors.clone());
        let extension_calls = Family::<ExtensionLabels, Counter>::default();
        registry.register("xiaozhi_extension_calls", "Extension calls by outcome", extension_calls.clone());
        // 100 µs … ~52 s.
        let extension_call_seconds = Family::<ExtensionIdLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 20))) as fn() -> Histogram,
        );
        registry.register(
            "xiaozhi_extension_call_seconds",
            "One extension call, instantiation included, by extension",
            extension_call_seconds.clone(),
        );
        let devices_dropped = Family::<DroppedLabels, Counter>::default();
        registry.register("xiaozhi_devices_dropped", "Connections given up on, by reason", devices_dropped.clone());
        let limits_hit = Family::<LimitLabels, Counter>::default();
        registry.register("xiaozhi_limits_hit", "Inputs cut or refused at a limit, by limit", limits_hit.clone());
        let mqtt_refused = Family::<DroppedLabels, Counter>::default();
        registry.register("xiaozhi_mqtt_refused", "MQTT connections refused, by reason", mqtt_refused.clone());
        let udp_dropped = Family::<DroppedLabels, Counter>::default();
        registry.register("xiaozhi_udp_dropped", "UDP audio datagrams dropped, by reason", udp_dropped.clone());
        let downlink_frames = Family::<FrameLabels, Counter>::default();
        registry.register(
            "xiaozhi_downlink_frames",
            "Downlink Opus frames by how they were made",
            downlink_frames.clone(),
        );
        let encoder_steps = Family::<StepLabels, Counter>::default();
        registry.register(
            "xiaozhi_encoder_complexity_steps",
            "Opus encoder complexity steps (down when behind real time), by direction",
            encoder_steps.clone(),
        );
        Arc::new(Self {
            registry,
            sessions,
            sessions_total,
            turns_active,
            turns,
            first_audio,
            provider_errors,
            extension_calls,
            extension_call_seconds,
            extension_tallies: std::sync::Mutex::default(),
            devices_dropped,
            limits_hit,
            mqtt_refused,
            udp_dropped,
            encoder_steps,
            downlink_frames,
        })
    }

    /// Counts a provider failure.
    pub fn provider_error(&self, provider: &'static str) {
        self.provider_errors.get_or_create(&ProviderLabels { provider }).inc();
    }

    /// Counts a connection given up on (`not_reading`, `write_failed`).
    pub fn device_dropped(&self, reason: &'static str) {
        self.devices_dropped.get_or_create(&DroppedLabels { reason }).inc();
    }

    /// Counts an MQTT connection refused (`bad_password`, `bad_client_id`, `protocol`, `full`,
    /// `no_connect`).
    pub fn mqtt_refused(&self, reason: &'static str) {
        self.mqtt_refused.get_or_create(&DroppedLabels { reason }).inc();
    }

    /// Counts a UDP datagram dropped (see [`crate::protocol::udp::Dropped::reason`], and
    /// `unknown_ssrc`, `other_address`, `session_busy`).
    pub fn udp_dropped(&self, reason: &'static str) {
        self.udp_dropped.get_or_create(&DroppedLabels { reason }).inc();
    }

    /// Counts one finished extension call by its outcome (`ok`, `error`, `trap`, `timeout`).
    pub fn extension_call(&self, extension: &str, call: &'static str, outcome: &'static str) {
        self.extension_calls.get_or_create(&ExtensionLabels { extension: extension.to_owned(), call, outcome }).inc();
        let mut tallies = self.extension_tallies.lock().unwrap_or_else(|p| p.into_inner());
        let tally = tallies.entry(extension.to_owned()).or_default();
        match outcome {
            "ok" => tally.ok += 1,
            "error" => tally.error += 1,
            "trap" => tally.trap += 1,
            _ => tally.timeout += 1,
        }
    }

    /// Records how long one call of `extension` took, whatever its outcome.
    pub fn extension_took(&self, extension: &str, took: Duration) {
        self.extension_call_seconds
            .get_or_create(&ExtensionIdLabels { extension: extension.to_owned() })
            .observe(took.as_secs_f64());
        let mut tallies = self.extension_tallies.lock().unwrap_or_else(|p| p.into_inner());
        let recent = &mut tallies.entry(extension.to_owned()).or_default().recent_us;
        if recent.len() == EXTENSION_RECENT_CALLS {
            recent.pop_front();
        }
        recent.push_back(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }

    /// The calls of `extension` since start by outcome, with p50/p99 of its recent durations;
    /// `None` before its first call.
    pub fn extension_figures(&self, extension: &str) -> Option<ExtensionFigures> {
        let tallies = self.extension_tallies.lock().unwrap_or_else(|p| p.into_inner());
        let tally = tallies.get(extension)?;
        let mut sorted: Vec<u64> = tally.recent_us.iter().copied().collect();
        sorted.sort_unstable();
        // Nearest rank: the smallest duration with at least q of the calls at or below it.
        let quantile = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
            sorted.get(rank - 1).map(|us| (*us as f64 / 10.0).round() / 100.0)
        };
        Some(ExtensionFigures {
            calls: tally.ok + tally.error + tally.trap + tally.timeout,
            errors: tally.error,
            traps: tally.trap,
            timeouts: tally.timeout,
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
        })
    }

    /// Counts an input cut or refused at the `limits` key `limit`.
    pub fn limit_hit(&self, limit: &'static str) {
        self.limits_hit.get_or_create(&LimitLabels { limit }).inc();
    }

    /// Counts a downlink frame (`encoded`, `passed_through`).
    pub fn downlink_frame(&self, path: &'static str) {
        self.downlink_frames.get_or_create(&FrameLabels { path }).inc();
    }

    /// Counts an encoder complexity step (`down`, `up`).
    pub fn encoder_step(&self, direction: &'static str) {
        self.encoder_steps.get_or_create(&StepLabels { direction }).inc();
    }

    /// The metrics as OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The live figures the console shows: sessions open and opened, turns running and finished
    /// (by outcome), and the first-audio latency (count, mean, and the 50th and 90th percentiles
    /// as the upper bound of the histogram bucket they fall in).
    pub fn live(&self) -> serde_json::Value {
        let text = self.render();
        let mut turns = serde_json::Map::new();
        let (mut sum, mut count) = (0.0, 0.0);
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((name, value)) = line.rsplit_once(' ') else { continue };
            let Ok(value) = value.parse::<f64>() else { continue };
            if let Some(labels) = name.strip_prefix("xiaozhi_turns_total{") {
                let outcome = labels.split('"').nth(1).unwrap_or("other");
                turns.insert(outcome.to_owned(), serde_json::json!(value));
            } else if name == "xiaozhi_turn_first_audio_seconds_sum" {
                sum = value;
            } else if name == "xiaozhi_turn_first_audio_seconds_count" {
                count = value;
            } else if let Some(labels) = name.strip_prefix("xiaozhi_turn_first_audio_seconds_bucket{") {
                let le = labels.split('"').nth(1).unwrap_or("+Inf");
                buckets.push((le.parse().unwrap_or(f64::INFINITY), value));
            }
        }
        let quantile =
            |q: f64| {
                buckets
                    .iter()
                    .find(|(_, cumulative)| count > 0.0 && *cumulative >= q * count)
                    .map(|(le, _)| {
                        if le.is_finite() { serde_json::json!((le * 1000.0).round()) } else { serde_json::json!(null) }
                    })
                    .unwrap_or(serde_json::Value::Null)
            };
        serde_json::json!({
            "sessions": self.sessions.get(),
            "sessions_opened": self.sessions_total.get(),
            "turns_active": self.turns_active.get(),
            "turns": turns,
            "first_audio": {
                "count": count,
                "mean_ms": if count > 0.0 { serde_json::json!((sum / count * 1000.0).round()) } else { serde_json::Value::Null },
                "p50_ms_at_most": quantile(0.5),
                "p90_ms_at_most": quantile(0.9),
            },
        })
    }
}

/// Decrements a gauge when dropped: a session or turn counts as open exactly while its guard lives.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard is dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_figures_come_from_the_metrics() {
        let metrics = Metrics::new();
        let _session = GaugeGuard::new(&metrics.sessions);
        metrics.sessions_total.inc();
        for outcome in ["answered", "answered", "cancelled"] {
            metrics.turns.get_or_create(&TurnLabels { outcome }).inc();
        }
        for seconds in [0.1, 0.2, 0.3, 2.0] {
            metrics.first_audio.observe(seconds);
        }
        let live = metrics.live();
        assert_eq!(live["sessions"], 1);
        assert_eq!(live["sessions_opened"], 1);
        assert_eq!(live["turns"]["answered"], 2.0);
        assert_eq!(live["turns"]["cancelled"], 1.0);
        assert_eq!(live["first_audio"]["count"], 4.0);
        assert_eq!(live["first_audio"]["mean_ms"], 650.0);
        let p50 = live["first_audio"]["p50_ms_at_most"].as_f64().expect("p50");
        let p90 = live["first_audio"]["p90_ms_at_most"].as_f64().expect("p90");
        assert!((200.0..=400.0).contains(&p50) && p90 >= 2000.0, "{live}");
    }

    #[test]
    fn extension_figures_count_outcomes_and_take_percentiles_of_recent_calls() {
        let metrics = Metrics::new();
        assert_eq!(metrics.extension_figures("get_time"), None);
        for ms in 1..=100u64 {
            metrics.extension_took("get_time", Duration::from_millis(ms));
            metrics.extension_call("get_time", "tool.call", if ms % 10 == 0 { "error" } else { "ok" });
        }
        metrics.extension_took("get_time", Duration::from_secs(1));
        metrics.extension_call("get_time", "tool.call", "timeout");
        let figures = metrics.extension_figures("get_time").expect("figures");
        assert_eq!((figures.calls, figures.errors, figures.traps, figures.timeouts), (101, 10, 0, 1));
        assert_eq!((figures.p50_ms, figures.p99_ms), (Some(51.0), Some(100.0)));
        // Only the most recent calls count for the percentiles.
        for _ in 0..EXTENSION_RECENT_CALLS {
            metrics.extension_took("get_time", Duration::from_micros(250));
        }
        let figures = metrics.extension_figures("get_time").expect("figures");
        assert_eq!((figures.p50_ms, figures.p99_ms), (Some(0.25), Some(0.25)));
        let text = metrics.render();
        assert!(text.contains("xiaozhi_extension_call_seconds_count{extension=\"get_time\"} 1125\n"), "{text}");
        assert!(
            text.contains(
                "xiaozhi_extension_calls_total{extension=\"get_time\",call=\"tool.call\",outcome=\"timeout\"} 1\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn renders_openmetrics_text() {
        let metrics = Metrics::new();
        let guard = GaugeGuard::new(&metrics.sessions);
        metrics.sessions_total.inc();
        metrics.turns.get_or_create(&TurnLabels { outcome: "answered" }).inc();
        metrics.first_audio.observe(0.12);
        metrics.provider_error("llm");
        let text = metrics.render();
        assert!(text.contains("xiaozhi_sessions 1\n"), "{text}");
        assert!(text.contains("xiaozhi_sessions_opened_total 1\n"), "{text}");
        assert!(text.contains("xiaozhi_turns_total{outcome=\"answered\"} 1\n"), "{text}");
        assert!(text.contains("xiaozhi_provider_errors_total{provider=\"llm\"} 1\n"), "{text}");
        assert!(text.contains("xiaozhi_turn_first_audio_seconds_count 1\n"), "{text}");
        assert!(text.ends_with("# EOF\n"));
        drop(guard);
        assert!(metrics.render().contains("xiaozhi_sessions 0\n"));
    }
}
