//! `xiaozhi-server simulate`: one simulated device holding a conversation with a server, printing
//! what it receives and saving the spoken reply as a WAV file.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{DEFAULT_CLIENT_ID, DEFAULT_DEVICE_ID, Reply, SimConfig, SimDevice};
use crate::audio::UPLINK_SAMPLE_RATE;
use crate::audio::decode::{AudioFormat, decode_audio};
use crate::protocol::message::ListenMode;

/// How long to keep the microphone open (streaming silence) after the speech, waiting for the
/// reply to start.
const REPLY_START_WAIT: Duration = Duration::from_secs(30);

/// How long a whole reply may take, from the end of the input to `tts stop`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// The firmware's OTA HTTP timeout.
const OTA_TIMEOUT: Duration = Duration::from_secs(30);

/// The listening mode the simulated device uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimMode {
    /// Server VAD ends the utterance; silence is streamed until the reply starts.
    Auto,
    /// Push-to-talk: `listen start`, the speech, `listen stop`.
    Manual,
    /// Full duplex (the microphone stays open); streamed like auto.
    Realtime,
}

impl From<SimMode> for ListenMode {
    fn from(m: SimMode) -> Self {
        match m {
            SimMode::Auto => ListenMode::Auto,
            SimMode::Manual => ListenMode::Manual,
            SimMode::Realtime => ListenMode::Realtime,
        }
    }
}

/// Arguments of the `simulate` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// WebSocket URL of the server (ignored when --ota returns one).
    #[arg(long, default_value = "ws://127.0.0.1:8000/xiaozhi/v1/")]
    pub server: String,
    /// OTA URL: POST the firmware's check first and use the websocket url/token/version it returns.
    #[arg(long)]
    pub ota: Option<String>,
    /// A WAV file (any rate and channel count) to speak; resampled to 16 kHz mono.
    #[arg(long, conflicts_with = "text")]
    pub wav: Option<PathBuf>,
    /// Typed text, sent as `listen detect` instead of audio.
    #[arg(long)]
    pub text: Option<String>,
    /// Device-Id header: a lowercase MAC address.
    #[arg(long, default_value = DEFAULT_DEVICE_ID)]
    pub device_id: String,
    /// Client-Id header: a UUID.
    #[arg(long, default_value = DEFAULT_CLIENT_ID)]
    pub client_id: String,
    /// Access token (sent as `Authorization: Bearer <token>`).
    #[arg(long)]
    pub token: Option<String>,
    /// Binary protocol version.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub protocol_version: u32,
    /// Listening mode.
    #[arg(long, value_enum, default_value_t = SimMode::Auto)]
    pub mode: SimMode,
    /// Where to save the spoken reply (16-bit WAV at the downlink rate); with several turns, one
    /// file per turn (`reply-1.wav`, ...).
    #[arg(long, default_value = "reply.wav")]
    pub out: PathBuf,
    /// How many turns to hold (the same input each time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub turns: u32,
    /// Instead of a conversation: connect this many devices (hello and `listen start` only) and
    /// hold them idle, e.g. to read the server's memory per idle device.
    #[arg(long, conflicts_with_all = ["wav", "text"], value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub idle: Option<u32>,
    /// With --idle: seconds to hold the connections open.
    #[arg(long, default_value_t = 10)]
    pub hold: u64,
    /// Do not announce MCP in the hello (the firmware does; without it no tool list is held).
    #[arg(long)]
    pub no_mcp: bool,
    /// The transport the device is to use: the OTA answer decides, as on the firmware (`mqtt`
    /// needs --ota, whose answer must then carry the mqtt block).
    #[arg(long, value_enum, default_value_t = TransportArg::Websocket)]
    pub transport: TransportArg,
    /// Over MQTT: subscribe to the OTA block's subscribe_topic, as firmware before 2025 did (a
    /// stock broker such as mosquitto delivers to the device only then).
    #[arg(long)]
    pub subscribe: bool,
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TransportArg {
    /// WebSocket.
    #[default]
    Websocket,
    /// MQTT + UDP.
    Mqtt,
}

/// Runs the simulated conversation described by `args`, printing one line per event.
pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    if let Some(count) = args.idle {
        return hold_idle(&args, count).await;
    }
    let speech = match (&args.wav, &args.text) {
        (Some(path), _) => Some(load_wav_16k(path)?),
        (None, Some(_)) => None,
        (None, None) => bail!("give --wav <file> or --text <text>"),
    };
    let mut cfg = SimConfig {
        url: args.server.clone(),
        device_id: args.device_id.clone(),
        client_id: args.client_id.clone(),
        token: args.token.clone(),
        protocol_version: args.protocol_version,
        mcp: !args.no_mcp,
        ..SimConfig::default()
    };
    match &args.ota {
        Some(ota) => ota_check(ota, &mut cfg, args.transport, args.subscribe).await?,
        None if args.transport == TransportArg::Mqtt => {
            bail!("--transport mqtt needs --ota (the credentials come from it)")
        }
        None => {}
    }
    let mut device = SimDevice::connect(cfg).await?;
    println!(
        "connected: session {:?}, protocol v{}, downlink {} Hz / {} ms",
        device.session_id(),
        device.protocol_version(),
        device.downlink_sample_rate(),
        device.downlink_frame_ms()
    );
    let result = turns(&mut device, &args, speech.as_deref()).await;
    device.close_abruptly().await;
    result
}

/// Connects `count` devices with distinct ids and keeps them open for `args.hold` seconds.
async fn hold_idle(args: &SimulateArgs, count: u32) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut devices = Vec::with_capacity(count as usize);
    for i in 0..count {
        let cfg = SimConfig {
            url: args.server.clone(),
            device_id: format!("02:00:00:00:{:02x}:{:02x}", i >> 8, i & 0xff),
            client_id: format!("00000000-0000-4000-8000-{i:012x}"),
            token: args.token.clone(),
            protocol_version: args.protocol_version,
            mcp: !args.no_mcp,
            ..SimConfig::default()
        };
        let device = SimDevice::connect(cfg).await.with_context(|| format!("device {i}"))?;
        device.listen_start(args.mode.into()).await?;
        devices.push(device);
    }
    println!(
        "{count} devices connected in {} ms; holding them idle for {} s",
        started.elapsed().as_millis(),
        args.hold
    );
    tokio::time::sleep(std::time::Duration::from_secs(args.hold)).await;
    for device in devices {
        device.close_abruptly().await;
    }
    Ok(())
}

async fn turns(device: &mut SimDevice, args: &SimulateArgs, speech: Option<&[i16]>) -> anyhow::Result<()> {
    for turn in 1..=args.turns {
        if args.turns > 1 {
            println!("turn {turn}");
        }
        let calls_before = device.mcp_calls().len();
        match (speech, &args.text) {
            (Some(pcm), _) => {
                let mode = ListenMode::from(args.mode);
                device.listen_start(mode).await?;
                device.stream_speech(pcm, true).await?;
                if mode == ListenMode::Manual {
                    device.listen_stop().await?;
                } else if !device.stream_silence_until_tts(REPLY_START_WAIT).await? {
                    println!("(no tts start within {REPLY_START_WAIT:?} of the end of the speech)");
                }
            }
            (None, Some(text)) => device.detect(text).await?,
            (None, None) => bail!("give --wav <file> or --text <text>"),
        }
        let reply = device.collect_reply(REPLY_TIMEOUT).await?;
        print_reply(&reply, device.downlink_frame_ms());
        for (name, arguments) in device.mcp_calls().iter().skip(calls_before) {
            println!("mcp call: {name} {arguments}");
        }
        let path = out_path(&args.out, turn, args.turns);
        save_wav(&path, &reply.pcm, reply.sample_rate)?;
        println!("saved {} ({} ms at {} Hz)", path.display(), reply.audio_ms(), reply.sample_rate);
        // Like the firmware: the next listen starts once the queued audio has played out.
        if turn < args.turns
            && let Some((first, _)) = reply.frames.first()
        {
            let played = *first + Duration::from_millis(reply.audio_ms());
            tokio::time::sleep(played.saturating_duration_since(Instant::now())).await;
        }
    }
    Ok(())
}

fn print_reply(reply: &Reply, frame_ms: u32) {
    for v in &reply.json {
        let text = v.get("text").and_then(Value::as_str).unwrap_or("");
        match (v.get("type").and_then(Value::as_str), v.get("state").and_then(Value::as_str)) {
            (Some("stt"), _) => println!("stt: {text}"),
            (Some("llm"), _) => {
                println!("llm emotion: {}", v.get("emotion").and_then(Value::as_str).unwrap_or("?"))
            }
            (Some("tts"), Some("start")) => println!("tts start"),
            (Some("tts"), Some("sentence_start")) => println!("sentence: {text}"),
            (Some("tts"), Some("sentence_end")) => {}
            (Some("tts"), Some("stop")) => {
                println!(
                    "audio: {} frames, {} ms (at most {:.1} frames ahead{})",
                    reply.frames.len(),
                    reply.audio_ms(),
                    reply.max_frames_ahead(frame_ms),
                    if reply.frames_outside_speaking > 0 {
                        format!(", {} frames outside speaking", reply.frames_outside_speaking)
                    } else {
                        String::new()
                    }
                );
                println!("tts stop");
            }
            (Some("mcp"), _) => {
                let payload = v.get("payload").cloned().unwrap_or(Value::Null);
                println!("mcp request: {payload}");
            }
            _ => println!("json: {v}"),
        }
    }
}

/// `reply.wav` for one turn, `reply-N.wav` for turn N of several.
fn out_path(out: &Path, turn: u32, turns: u32) -> PathBuf {
    if turns <= 1 {
        return out.to_path_buf();
    }
    let stem = out.file_stem().and_then(|s| s.to_str()).unwrap_or("reply");
    let name = match out.extension().and_then(|e| e.to_str()) {
        Some(ext) => format!("{stem}-{turn}.{ext}"),
        None => format!("{stem}-{turn}"),
    };
    out.with_file_name(name)
}

/// Reads a WAV file of any rate and channel count as 16 kHz mono.
pub(crate) fn load_wav_16k(path: &Path) -> anyhow::Result<Vec<i16>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let clip = decode_audio(&bytes, AudioFormat::Wav).with_context(|| format!("cannot decode {}", path.display()))?;
    Ok(if clip.sample_rate == UPLINK_SAMPLE_RATE {
        clip.samples
    } else {
        crate::audio::resample::resample(&clip.samples, clip.sample_rate, UPLINK_SAMPLE_RATE)
    })
}

/// Writes mono 16-bit PCM as a WAV file.
fn save_wav(path: &Path, pcm: &[i16], sample_rate: u32) -> anyhow::Result<()> {
    let spec =
        hound::WavSpec { channels: 1, sample_rate, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    let mut writer =
        hound::WavWriter::create(path, spec).with_context(|| format!("cannot create {}", path.display()))?;
    for &s in pcm {
        writer.write_sample(s)?;
    }
    writer.finalize().with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The body of the firmware's OTA check (§5.1).
fn ota_body(cfg: &SimConfig) -> Value {
    json!({
        "version": 2,
        "language": "zh-CN",
        "flash_size": 16_777_216,
        "minimum_free_heap_size": "123456",
        "mac_address": cfg.device_id,
        "uuid": cfg.client_id,
        "chip_model_name": "esp32s3",
        "chip_info": {"model": 9, "cores": 2, "revision": 0, "features": 18},
        "application": {
            "name": "xiaozhi",
            "version": super::mcp::FIRMWARE_VERSION,
            "compile_time": "2026-08-08T00:00:00Z",
            "idf_version": "v5.5",
            "elf_sha256": "0".repeat(64),
        },
        "partition_table": [{"label": "nvs", "type": 1, "subtype": 2, "address": 36864, "size": 16384}],
        "ota": {"label": "ota_0"},
        "display": {"monochrome": false, "width": 240, "height": 240},
        "board": {
            "type": "simulator",
            "name": "simulator",
            "ssid": "simulator",
            "rssi": -50,
            "channel": 1,
            "ip": "127.0.0.1",
            "mac": cfg.device_id,
        },
    })
}

/// POSTs the OTA check, prints the answer and applies it to `cfg` like the firmware stores it in
/// NVS.
async fn ota_check(url: &str, cfg: &mut SimConfig, transport: TransportArg, subscribe: bool) -> anyhow::Result<()> {
    let body = ota_fetch(url, cfg).await?;
    println!("ota: {body}");
    apply_ota(&body, cfg, transport, subscribe)
}

/// POSTs the firmware's OTA check for `cfg`'s device and returns the answer.
pub async fn ota_fetch(url: &str, cfg: &SimConfig) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder().timeout(OTA_TIMEOUT).build()?;
    let response = client
        .post(url)
        .header("Activation-Version", "1")
        .header("Device-Id", &cfg.device_id)
        .header("Client-Id", &cfg.client_id)
        .header("User-Agent", format!("simulator/{}", super::mcp::FIRMWARE_VERSION))
        .header("Accept-Language", "zh-CN")
        .json(&ota_body(cfg))
        .send()
        .await
        .with_context(|| format!("OTA check at {url} failed"))?;
    let status = response.status();
    let text = response.text().await.context("reading the OTA response failed")?;
    if status != reqwest::StatusCode::OK {
        bail!("OTA check answered HTTP {status}: {}", text.trim());
    }
    serde_json::from_str(&text).with_context(|| format!("OTA response is not JSON: {text}"))
}

/// Applies an OTA response the way the firmware does (§5.2): activation blocks, `mqtt` wins over
/// `websocket`, and the websocket url/token/version replace the current ones. The transport it
/// picks must be `expected`.
pub fn apply_ota(body: &Value, cfg: &mut SimConfig, expected: TransportArg, subscribe: bool) -> anyhow::Result<()> {
    if let Some(activation) = body.get("activation")
        && (activation.get("code").is_some() || activation.get("challenge").is_some())
    {
        bail!(
            "the device must be activated first: {}",
            activation.get("message").and_then(Value::as_str).unwrap_or("(no message)")
        );
    }
    if let Some(block) = body.get("mqtt") {
        if expected != TransportArg::Mqtt {
            bail!("the OTA response has an \"mqtt\" section, so the firmware would use MQTT, not WebSocket");
        }
        let mut settings = super::mqtt::MqttSettings::from_ota(block)?;
        settings.subscribe = subscribe;
        cfg.transport = super::SimTransport::Mqtt(settings);
        return Ok(());
    }
    if expected == TransportArg::Mqtt {
        bail!(
            "the OTA response has no \"mqtt\" section, so the firmware would use the WebSocket (is mqtt.enabled on?)"
        );
    }
    let Some(ws) = body.get("websocket") else {
        bail!("the OTA response has no \"websocket\" section (the firmware would fall back to MQTT)");
    };
    let as_text = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if let Some(url) = ws.get("url").and_then(as_text) {
        cfg.url = url;
    }
    if let Some(token) = ws.get("token").and_then(as_text) {
        cfg.token = Some(token);
    }
    match ws.get("version") {
        // A string is stored as a string and read back as 0, which means version 1.
        Some(Value::String(_)) => cfg.protocol_version = 1,
        Some(v) => {
            if let Some(n) = v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                cfg.protocol_version = if n == 0 { 1 } else { n };
            }
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: SimulateArgs,
    }

    #[test]
    fn arguments_parse_with_defaults() {
        let cli = Cli::try_parse_from(["sim", "--text", "hi"]).unwrap();
        assert_eq!(cli.args.server, "ws://127.0.0.1:8000/xiaozhi/v1/");
        assert_eq!(cli.args.protocol_version, 1);
        assert_eq!(cli.args.mode, SimMode::Auto);
        assert_eq!(cli.args.turns, 1);
        assert_eq!(cli.args.out, PathBuf::from("reply.wav"));
        let cli =
            Cli::try_parse_from(["sim", "--wav", "a.wav", "--mode", "manual", "--protocol-version", "3"]).unwrap();
        assert_eq!(cli.args.mode, SimMode::Manual);
        assert_eq!(cli.args.protocol_version, 3);
        assert!(Cli::try_parse_from(["sim", "--protocol-version", "4"]).is_err());
        assert!(Cli::try_parse_from(["sim", "--wav", "a.wav", "--text", "x"]).is_err());
    }

    #[test]
    fn ota_response_is_applied_like_the_firmware() {
        let mut cfg = SimConfig::default();
        let body = json!({"server_time":{"timestamp":1,"timezone_offset":480},
            "websocket":{"url":"ws://10.0.0.2:8000/xiaozhi/v1/","token":"abc","version":2}});
        apply_ota(&body, &mut cfg, TransportArg::Websocket, false).unwrap();
        assert_eq!(cfg.url, "ws://10.0.0.2:8000/xiaozhi/v1/");
        assert_eq!(cfg.token.as_deref(), Some("abc"));
        assert_eq!(cfg.protocol_version, 2);
        apply_ota(&json!({"websocket":{"version":"3"}}), &mut cfg, TransportArg::Websocket, false).unwrap();
        assert_eq!(cfg.protocol_version, 1, "a string version reads back as 0 = v1");
        assert!(
            apply_ota(&json!({"websocket":{},"mqtt":{"endpoint":"x"}}), &mut cfg, TransportArg::Websocket, false)
                .is_err()
        );
        assert!(apply_ota(&json!({"websocket":{}}), &mut cfg, TransportArg::Mqtt, false).is_err());
        let mqtt = json!({"endpoint":"10.0.0.2:1883","client_id":"GID_x@@@aa_bb_cc_dd_ee_ff@@@u","publish_topic":"device-server"});
        apply_ota(&json!({ "mqtt": mqtt }), &mut cfg, TransportArg::Mqtt, true).unwrap();
        let crate::simulator::SimTransport::Mqtt(settings) = &cfg.transport else { panic!("{:?}", cfg.transport) };
        assert!(settings.subscribe && settings.endpoint == "10.0.0.2:1883");
        cfg.transport = crate::simulator::SimTransport::WebSocket;
        let err = apply_ota(
            &json!({"websocket":{},"activation":{"code":"123456","message":"go\n123456"}}),
            &mut cfg,
            TransportArg::Websocket,
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("123456"));
        let body = ota_body(&cfg);
        assert_eq!(body["mac_address"], DEFAULT_DEVICE_ID);
        assert!(body["minimum_free_heap_size"].is_string());
    }

    #[test]
    fn wav_round_trip_and_paths() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.wav");
        let pcm: Vec<i16> = (0..4800).map(|i| ((i % 100) * 100) as i16).collect();
        save_wav(&path, &pcm, 48_000).unwrap();
        let back = load_wav_16k(&path).unwrap();
        assert!((1550..=1650).contains(&back.len()), "48 kHz → 16 kHz: {} samples", back.len());
        save_wav(&path, &pcm, 16_000).unwrap();
        assert_eq!(load_wav_16k(&path).unwrap(), pcm);
        assert_eq!(out_path(Path::new("/tmp/reply.wav"), 2, 3), PathBuf::from("/tmp/reply-2.wav"));
        assert_eq!(out_path(Path::new("reply.wav"), 1, 1), PathBuf::from("reply.wav"));
    }
}
