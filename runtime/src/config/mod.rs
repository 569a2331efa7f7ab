//! The typed configuration.
//!
//! The file format is the Python server's `config.yaml`, so a migrating user's file keeps
//! working: `server`, `selected_module`, and the provider dictionaries `VAD`, `ASR`, `LLM`, `TTS`,
//! `Memory`, `Intent` keyed by a name whose entry has a `type`. Keys this server does not know are
//! reported as warnings; wrong types, and a selected provider that does not exist or whose `type`
//! is not supported, are errors naming the YAML path of the problem.
//!
//! [`load()`] reads `config.yaml`, deep-merges `data/.config.yaml` over it (maps merge, lists and
//! scalars replace), validates, and resolves the selected providers into [`Providers`].
//! [`watch`] reloads on change and publishes each valid config to new sessions.

mod defaults;
pub mod load;
pub mod migrate;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use load::{ConfigError, ConfigSource, Loaded, load, load_str, with_overrides};

/// The whole configuration, as read from YAML (see `config.yaml` at the repository root for the
/// documented defaults).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Listening addresses, public URLs and device authentication.
    pub server: ServerConfig,
    /// Log level.
    pub log: LogConfig,
    /// Python server compatibility: whether to delete recorded audio (we keep none).
    pub delete_audio: bool,
    /// Seconds of audio without voice after which the assistant says goodbye and closes.
    pub close_connection_no_voice_time: u64,
    /// Seconds one TTS sentence may take.
    pub tts_timeout: u64,
    /// Seconds one tool call may take.
    pub tool_call_timeout: u64,
    /// Whether a wake word (`listen detect`) gets a spoken greeting.
    pub enable_greeting: bool,
    /// Utterances that end the conversation (exact match after punctuation removal).
    pub exit_commands: Vec<String>,
    /// Wake words; `listen detect` with one of them is a greeting, any other text is a typed turn.
    pub wakeup_words: Vec<String>,
    /// The hello template sent to devices; `audio_params` gives the downlink Opus rate and frame.
    pub xiaozhi: HelloTemplate,
    /// The system prompt.
    pub prompt: String,
    /// How the assistant says goodbye when the no-voice timeout fires.
    pub end_prompt: EndPrompt,
    /// What the device hears when a provider fails.
    pub system_error_response: String,
    /// Which entry of each provider dictionary is in use.
    pub selected_module: SelectedModule,
    /// Voice activity detectors by name.
    #[serde(rename = "VAD")]
    pub vad: BTreeMap<String, serde_yaml_ng::Value>,
    /// Speech recognizers by name.
    #[serde(rename = "ASR")]
    pub asr: BTreeMap<String, serde_yaml_ng::Value>,
    /// Language models by name.
    #[serde(rename = "LLM")]
    pub llm: BTreeMap<String, serde_yaml_ng::Value>,
    /// Speech synthesizers by name.
    #[serde(rename = "TTS")]
    pub tts: BTreeMap<String, serde_yaml_ng::Value>,
    /// Memory providers by name.
    #[serde(rename = "Memory")]
    pub memory: BTreeMap<String, serde_yaml_ng::Value>,
    /// Intent providers by name.
    #[serde(rename = "Intent")]
    pub intent: BTreeMap<String, serde_yaml_ng::Value>,
    /// Vision models by name: the selected one explains the photos devices post to the vision
    /// endpoint (`POST /mcp/vision/explain`).
    #[serde(rename = "VLLM")]
    pub vllm: BTreeMap<String, serde_yaml_ng::Value>,
    /// Downlink audio encoding and pacing.
    pub audio: AudioConfig,
    /// Where model files and the ONNX Runtime library live.
    pub models: ModelsConfig,
    /// Device activation through the OTA endpoint.
    pub activation: ActivationConfig,
    /// The Python server's manager API. Only `secret` is used (as the device-token key when
    /// `server.auth_key` is empty); reading the whole config from the API is not supported.
    #[serde(rename = "manager-api")]
    pub manager_api: ManagerApiConfig,
    /// WebAssembly extensions: where they are installed and what each one is granted.
    pub extensions: ExtensionsConfig,
    /// The Python server's plugin settings, by plugin name: `plugins.<id>` is the config of the
    /// extension `<id>` and grants it what it needs (see [`Config::extension_grants`]).
    pub plugins: BTreeMap<String, serde_yaml_ng::Value>,
    /// Where state lives: extension key/values (memory), chat history, the device registry.
    pub store: StoreConfig,
    /// The bound on every per-device and per-caller resource (README "Limits and security").
    pub limits: LimitsConfig,
    /// The console (its sign-in and JSON API) on the HTTP port.
    pub console: ConsoleConfig,
    /// The built-in MQTT + UDP endpoint: the firmware's second transport.
    pub mqtt: MqttConfig,
    /// The selected providers, typed; filled by [`load()`], never read from YAML.
    #[serde(skip)]
    pub providers: Providers,
}

/// `server:` — addresses, public URLs and authentication.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerConfig {
    /// Address to bind both ports on.
    pub ip: String,
    /// WebSocket port (devices).
    pub port: u16,
    /// HTTP port (OTA, activation, health).
    pub http_port: u16,
    /// Public WebSocket URL given to devices by OTA; empty = derived from the OTA request's Host.
    pub websocket: String,
    /// Public URL of the vision endpoint, passed to devices in MCP `initialize` when a `VLLM` is
    /// selected; empty = `http://<host the device connected to>:<http_port>/mcp/vision/explain`.
    pub vision_explain: String,
    /// Hours east of UTC, reported to devices by OTA (the Python server's `+8` style).
    pub timezone_offset: i32,
    /// Device authentication.
    pub auth: AuthConfig,
    /// Secret for device tokens; empty = `manager-api.secret`, else a random per-process key.
    pub auth_key: String,
    /// The Python server's key: `host:port` of an external MQTT gateway (the Node
    /// `xiaozhi-mqtt-gateway`, which bridges to our WebSocket with `?from=mqtt_gateway`). When set
    /// and the built-in endpoint (`mqtt.enabled`) is off, OTA sends devices there.
    pub mqtt_gateway: String,
    /// The key of the MQTT password (`base64(HMAC-SHA256(client_id + "|" + username))`): OTA
    /// issues passwords with it and the built-in endpoint checks them; empty = no check (as the
    /// gateway does without `MQTT_SIGNATURE_KEY`).
    pub mqtt_signature_key: String,
    /// Token for the admin routes (`/metrics`, `/xiaozhi/extensions*`) on the HTTP port, sent as
    /// `Authorization: Bearer <token>`; empty = those routes answer loopback callers only.
    pub admin_token: String,
    /// Path of the MCP endpoint on the WebSocket port: tool servers connect to
    /// `ws://<host>:<port><path>/?token=<token>` (tokens from `xiaozhi-server mcp-token issue`).
    pub mcp_endpoint_path: String,
}

/// `console:` — the console on the HTTP port; off while `password` is empty.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ConsoleConfig {
    /// The password that signs in; empty: the console is off.
    pub password: String,
    /// Where it answers on the HTTP port (`/console`: `http://<host>:8003/console/`).
    pub path: String,
    /// Hours a sign-in lasts.
    pub session_hours: u64,
}

impl std::fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("password", &if self.password.is_empty() { "" } else { "<set>" })
            .field("path", &self.path)
            .field("session_hours", &self.session_hours)
            .finish()
    }
}

/// `server.auth:` — device tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Whether devices must present a token.
    pub enabled: bool,
    /// Device ids that need no token.
    pub allowed_devices: Vec<String>,
    /// Token lifetime in seconds (30 days when absent).
    pub expire_seconds: Option<u64>,
}

/// `log:` — logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `trace`, `debug`, `info`, `warn` or `error` (the Python server's upper-case names work too).
    pub log_level: String,
}

/// `xiaozhi:` — the hello template.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HelloTemplate {
    /// Always `hello`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Protocol version echoed to devices.
    pub version: u32,
    /// Always `websocket` on this transport.
    pub transport: String,
    /// The downlink audio parameters: what we really encode at.
    pub audio_params: AudioParams,
}

/// Opus stream parameters as they appear in hello messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AudioParams {
    /// Always `opus`.
    pub format: String,
    /// Sample rate in Hz (8000, 12000, 16000, 24000 or 48000).
    pub sample_rate: u32,
    /// Always 1.
    pub channels: u32,
    /// Frame duration in milliseconds (the firmware uses 60).
    pub frame_duration: u32,
}

/// `end_prompt:` — the goodbye on the no-voice timeout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct EndPrompt {
    /// Whether the LLM says goodbye (otherwise the connection just closes).
    pub enable: bool,
    /// The instruction given to the LLM.
    pub prompt: String,
}

/// `selected_module:` — names of the entries in use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectedModule {
    /// Entry of `VAD`.
    #[serde(rename = "VAD")]
    pub vad: String,
    /// Entry of `ASR`.
    #[serde(rename = "ASR")]
    pub asr: String,
    /// Entry of `LLM`.
    #[serde(rename = "LLM")]
    pub llm: String,
    /// Entry of `TTS`.
    #[serde(rename = "TTS")]
    pub tts: String,
    /// Entry of `Memory`.
    #[serde(rename = "Memory")]
    pub memory: String,
    /// Entry of `Intent`.
    #[serde(rename = "Intent")]
    pub intent: String,
    /// Entry of `VLLM`: the vision model; empty = no vision offered to devices.
    #[serde(rename = "VLLM")]
    pub vllm: String,
}

/// `audio:` — downlink encoding and pacing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AudioConfig {
    /// Opus bitrate in bits per second.
    pub opus_bitrate: i32,
    /// Opus encoder complexity, 0–10.
    pub opus_complexity: u8,
    /// Frames sent at once before real-time pacing starts (the firmware buffers at most 40).
    pub prebuffer_frames: u32,
}

/// `models:` — model files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ModelsConfig {
    /// Directory holding the models fetched by `models/fetch.sh`.
    pub dir: PathBuf,
    /// The ONNX Runtime shared library; empty = `<dir>/lib/libonnxruntime.so`.
    pub onnxruntime: PathBuf,
}

/// `activation:` — whether unknown devices must be bound before they may talk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ActivationConfig {
    /// Whether OTA answers unbound devices with an activation code.
    pub enabled: bool,
    /// Text shown on the device; `{code}` is replaced by the 6-digit code.
    pub message: String,
    /// eFuse HMAC keys of devices that have one, by their `Serial-Number` (hex): such a device
    /// must prove it holds its key (device-protocol.md §5.3) before it gets a token.
    pub hmac_keys: BTreeMap<String, String>,
}

/// `manager-api:` — the Python server's management back end.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ManagerApiConfig {
    /// The API root. When set, the Python server reads its whole config from the API; this
    /// server warns and keeps using the local files.
    pub url: String,
    /// The server secret; used as the device-token key when `server.auth_key` is empty.
    pub secret: String,
    /// Seconds one API request may take (accepted for compatibility).
    pub timeout: u64,
    /// Retries of a failed API request (accepted for compatibility).
    pub max_retries: u32,
    /// Seconds between retries (accepted for compatibility).
    pub retry_delay: u64,
}

/// `store:` — where state lives (see [`crate::store`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// `embedded` (an SQLite file in the data directory, the default) or `redis`.
    #[serde(rename = "type")]
    pub kind: StoreKind,
    /// The Redis URL (`redis://[:password@]host:port[/db]`), for `type: redis`.
    pub url: String,
    /// Prefix of every Redis key, so that several deployments can share one Redis.
    pub key_prefix: String,
    /// The embedded database file; relative paths are inside the data directory.
    pub path: PathBuf,
    /// Chat history messages kept per device (oldest dropped first).
    pub history_limit: usize,
    /// Redis: start even when Redis cannot be reached (writes are queued until it can), instead
    /// of failing after the connection attempts.
    pub start_degraded: bool,
    /// Redis: most writes queued while Redis is unreachable; beyond it the oldest are dropped
    /// (and counted in the log).
    pub outage_buffer: usize,
    /// Redis: how long one command may take before Redis counts as unreachable, ms.
    pub timeout_ms: u64,
    /// A name for this server instance in the device registry; empty: host name and port.
    pub instance_id: String,
}

/// `mqtt:` — the built-in MQTT + UDP endpoint (device-protocol.md §3): MQTT 3.1.1 for the JSON
/// messages, AES-128-CTR encrypted UDP for the audio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MqttConfig {
    /// Whether the endpoint runs; OTA then gives devices the `mqtt` block instead of `websocket`.
    pub enabled: bool,
    /// The MQTT port (plain TCP; the firmware takes port 8883 as TLS, so do not use it here).
    pub port: u16,
    /// The UDP audio port (one socket for every session).
    pub udp_port: u16,
    /// `host:port` devices are given for MQTT; empty = the host the OTA request reached and
    /// `port`.
    pub endpoint: String,
    /// The address devices send UDP audio to (the hello's `udp.server`); empty = the local
    /// address the device's MQTT connection reached.
    pub udp_host: String,
    /// The keep-alive given to devices, seconds (the firmware's default is 240); a client that
    /// sends nothing for 1.5 × its CONNECT keep-alive is closed.
    pub keepalive: u16,
    /// Fleet mode: an external broker (`mqtt://host:port`) that devices connect to and every
    /// instance joins as a client; empty = the built-in endpoint on `port`. Needs `store.type:
    /// redis` (the device registry decides which instance serves a device) and `udp_host`.
    pub broker: String,
    /// The user name and password this instance gives the broker (empty: none).
    pub broker_username: String,
    /// See `broker_username`.
    pub broker_password: String,
    /// The shared-subscription group the instances share the devices' topic in.
    pub share_group: String,
}

impl MqttConfig {
    /// The broker's host and port in fleet mode (`None`: the built-in endpoint).
    pub fn broker_address(&self) -> Option<Result<(String, u16), String>> {
        let raw = self.broker.trim();
        if raw.is_empty() {
            return None;
        }
        let rest = raw.strip_prefix("mqtt://").or_else(|| raw.strip_prefix("tcp://")).unwrap_or(raw);
        let rest = rest.trim_end_matches('/');
        Some(match rest.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() => port
                .parse::<u16>()
                .map(|port| (host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
                .map_err(|_| format!("{raw:?}: the port is not a number")),
            None if !rest.is_empty() && !rest.contains('/') => Ok((rest.to_owned(), 1883)),
            _ => Err(format!("{raw:?} is not mqtt://host:port")),
        })
    }
}

/// `limits:` — the bound on every per-device and per-caller resource. What happens at each limit
/// is in the README ("Limits and security"); every value must be above zero.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LimitsConfig {
    /// Milliseconds a device has to send its hello after connecting.
    pub hello_timeout_ms: u64,
    /// Milliseconds a device may take to accept one message we send before it is closed as not
    /// reading.
    pub write_timeout_ms: u64,
    /// Bytes of messages queued for one device; a device that lets more pile up is closed as not
    /// reading.
    pub outbound_queue_bytes: usize,
    /// The kernel's send buffer of every accepted connection, bytes (Linux doubles it): a peer
    /// that stops reading holds at most this much kernel memory, and is noticed at once.
    pub socket_send_buffer_bytes: usize,
    /// Tools one device may list over MCP; the rest of its list is ignored.
    pub device_tools: usize,
    /// Longest device tool name, in characters; a tool with a longer name is ignored.
    pub tool_name_chars: usize,
    /// Longest tool result given to the LLM or spoken, in characters; the rest is cut off.
    pub tool_result_chars: usize,
    /// Longest text spoken as one sentence, in characters; longer text is split.
    pub sentence_chars: usize,
    /// Largest audio file (or download) an extension may play, in bytes; a larger one is refused.
    pub media_file_bytes: u64,
    /// Longest an extension's audio plays at once, in seconds; the rest is not played.
    pub media_seconds: u32,
    /// Largest message kept in a conversation and in the stored chat history, in bytes; the rest
    /// is cut off. A device's stored history is at most `store.history_limit` such messages.
    pub history_entry_bytes: usize,
    /// Bytes of values one extension may keep in its key/value store, over all devices.
    pub kv_bytes_per_extension: u64,
    /// Keys one extension may keep for one device.
    pub kv_keys_per_device: usize,
    /// Milliseconds an HTTP client has to send the headers of a request.
    pub http_header_timeout_ms: u64,
    /// Milliseconds an HTTP client has to send the body of a request.
    pub http_body_timeout_ms: u64,
    /// Seconds an activation code (and the state of its waiting device) is kept.
    pub activation_code_ttl: u64,
    /// New activation codes one IP address may cause per minute (OTA checks of unknown devices
    /// beyond it are answered 429).
    pub new_devices_per_ip_per_minute: u32,
    /// Largest request body of the vision endpoint (`POST /mcp/vision/explain`), bytes; a larger
    /// one is answered 413 without being read further.
    pub vision_body_bytes: usize,
    /// Milliseconds the vision model may take to explain one photo.
    pub vision_timeout_ms: u64,
    /// Seconds a vision token (sent to the device in MCP `initialize`) stays valid.
    pub vision_token_seconds: u64,
    /// Vision requests served at once over all devices (one per device at a time); more are
    /// answered 429.
    pub vision_requests: usize,
    /// Milliseconds after the hello during which a turn waits for the device's MCP tool list; a
    /// device that has not listed its tools by then is not waited for.
    pub device_mcp_wait_ms: u64,
    /// Milliseconds the device has to answer each request of the MCP start-up (`initialize`, each
    /// `tools/list` page); a start-up that fails is retried once, then given up.
    pub device_mcp_timeout_ms: u64,
    /// Tool servers connected to the MCP endpoint at once, over all tokens; more are refused (503).
    pub mcp_endpoint_clients: usize,
    /// Tool servers connected at once under one MCP endpoint token; more are refused (429).
    pub mcp_endpoint_clients_per_token: usize,
    /// Most tools taken from one tool server on the MCP endpoint (the rest of its list is ignored).
    pub mcp_endpoint_tools: usize,
    /// Largest JSON-RPC message a tool server on the MCP endpoint may send, bytes; a larger one
    /// closes its socket.
    pub mcp_endpoint_message_bytes: usize,
    /// Milliseconds a tool server on the MCP endpoint has to answer one request (`initialize`, a
    /// `tools/list` page, `ping`, `tools/call`); a call given up is announced with
    /// `notifications/cancelled`.
    pub mcp_endpoint_call_timeout_ms: u64,
    /// MCP servers of `data/.mcp_server_settings.json` run at once; later entries are skipped.
    pub mcp_servers: usize,
    /// Most tools taken from one MCP server of the settings file (the rest are ignored).
    pub mcp_server_tools: usize,
    /// Milliseconds an MCP server of the settings file has to start, answer `initialize` and
    /// list its tools.
    pub mcp_server_start_timeout_ms: u64,
    /// Milliseconds an MCP server of the settings file has to answer one `tools/call` (never
    /// more than `tool_call_timeout`); a call given up is announced with `notifications/cancelled`.
    pub mcp_server_call_timeout_ms: u64,
    /// Milliseconds before an MCP server that went away is started again; doubles per failure up
    /// to 60 s, and resets once a connection has lasted 60 s.
    pub mcp_server_restart_ms: u64,
    /// MQTT connections to the built-in endpoint at once (before and after CONNECT); more are
    /// closed at once.
    pub mqtt_clients: usize,
    /// Milliseconds an MQTT client has to send CONNECT after connecting.
    pub mqtt_connect_timeout_ms: u64,
    /// Largest MQTT packet a device may send, bytes; a larger one closes its connection.
    pub mqtt_packet_bytes: usize,
    /// Seconds a UDP audio channel may go without a valid packet or MQTT message before its
    /// session ends (the firmware's own channel timeout is 120 s).
    pub udp_channel_timeout: u64,
}

/// The store backends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite in the data directory: no other service needed.
    #[default]
    Embedded,
    /// Redis: shared by several server instances.
    Redis,
}

/// `extensions:` — WebAssembly extensions (tools, intent, memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionsConfig {
    /// Directories searched for extensions; each extension is a sub-directory holding
    /// `extension.toml` and `<id>.wasm`.
    pub dirs: Vec<PathBuf>,
    /// Where compiled extensions are cached (owned by the server, never an extension directory).
    pub cache_dir: PathBuf,
    /// What the operator grants each extension, by extension id. Everything not granted here is
    /// denied, and an extension whose manifest asks for more than its grant is not loaded.
    pub grants: BTreeMap<String, Grant>,
}

/// `extensions.grants.<id>:` — the capabilities granted to one extension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Grant {
    /// Hosts the extension may send HTTP requests to (exact host names, any port).
    pub http_hosts: Vec<String>,
    /// Whether the extension may use its key/value store.
    pub kv: bool,
    /// Whether the extension may use the server's LLM.
    pub llm: bool,
    /// The settings the extension can read, by key.
    pub config: BTreeMap<String, String>,
    /// Most linear memory the extension may use, in MiB; empty = the host maximum.
    pub memory_mb: Option<u32>,
    /// Longest single call, in milliseconds; empty = the host maximum.
    pub timeout_ms: Option<u32>,
    /// Media directories, by the name the manifest asks for (`media_dirs = ["music"]`): the
    /// extension reads the directory, read-only, at `/<name>` and may play files from it.
    pub media_dirs: BTreeMap<String, std::path::PathBuf>,
    /// Set for a grant that comes from `plugins.<id>`: the operator configured the extension as a
    /// Python plugin, so the hosts its own manifest names are granted too.
    #[serde(skip)]
    pub from_plugins: bool,
}

/// The selected providers, parsed into their typed settings.
#[derive(Debug, Clone)]
pub struct Providers {
    /// Voice activity detection.
    pub vad: VadSpec,
    /// Speech recognition.
    pub asr: AsrSpec,
    /// Language model.
    pub llm: LlmSpec,
    /// Speech synthesis.
    pub tts: TtsSpec,
    /// How tools reach the model.
    pub intent: IntentMode,
    /// Conversation memory.
    pub memory: MemoryMode,
    /// The selected vision model (`selected_module.VLLM`); `None` when none is selected.
    pub vllm: Option<VllmConfig>,
    /// `Intent.<selected>.functions`: the extensions (by id or tool name) whose tools are offered;
    /// `None` (no such key) offers every tool. The device's own MCP tools and
    /// [`crate::tools::ALWAYS_OFFERED`] are offered either way.
    pub functions: Option<Vec<String>>,
}

impl Default for Providers {
    fn default() -> Self {
        Self {
            vad: VadSpec::default(),
            asr: AsrSpec::default(),
            llm: LlmSpec::default(),
            tts: TtsSpec::default(),
            intent: IntentMode::default(),
            memory: MemoryMode::default(),
            // `selected_module.VLLM: OpenAIVLLM` of the default configuration.
            vllm: Some(VllmConfig {
                base_url: "https://api.openai.com/v1".into(),
                model_name: "gpt-4o-mini".into(),
                ..VllmConfig::default()
            }),
            functions: None,
        }
    }
}

/// A VAD entry, by `type`.
#[derive(Debug, Clone)]
pub enum VadSpec {
    /// `type: silero` — Silero VAD in process.
    Silero(SileroVadConfig),
}

impl Default for VadSpec {
    fn default() -> Self {
        Self::Silero(SileroVadConfig::default())
    }
}

/// An ASR entry, by `type`.
#[derive(Debug, Clone)]
pub enum AsrSpec {
    /// `type: openai` — POST `/v1/audio/transcriptions`.
    OpenAi(OpenAiAsrConfig),
    /// `type: whisper_onnx` — Whisper in process (Hugging Face ONNX layout).
    Whisper(WhisperConfig),
    /// `type: sensevoice_onnx` — SenseVoice in process (sherpa-onnx export).
    SenseVoice(SenseVoiceConfig),
    /// `type: fun_server` — the FunASR runtime server (WebSocket).
    FunServer(crate::asr::fun_server::Config),
    /// `type: doubao_stream` — Volcengine (Doubao) big-model streaming recognition.
    DoubaoStream(crate::asr::doubao_stream::Config),
    /// `type: aliyun_stream` — Aliyun NLS real-time speech recognition (WebSocket).
    AliyunStream(crate::asr::aliyun_stream::Config),
    /// `type: aliyunbl_stream` — Aliyun Bailian (DashScope) Paraformer real-time recognition.
    AliyunBlStream(crate::asr::aliyunbl_stream::Config),
    /// `type: qwen3_asr_flash` — Qwen3-ASR-Flash on DashScope.
    Qwen3AsrFlash(crate::asr::qwen3_asr_flash::Config),
    /// `type: xunfei_stream` — iFlytek (Xunfei) streaming dictation.
    XunfeiStream(crate::asr::xunfei_stream::Config),
    /// `type: tencent` — Tencent Cloud sentence recognition.
    Tencent(crate::asr::tencent::Config),
}

impl Default for AsrSpec {
    fn default() -> Self {
        Self::OpenAi(OpenAiAsrConfig::default())
    }
}

impl AsrSpec {
    /// The `type` this spec runs and one line about its settings (no secrets), for
    /// `check-config`.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Self::OpenAi(c) => ("openai", format!("model {}, at {}", c.model_name, c.base_url)),
            Self::Whisper(c) => ("whisper_onnx", format!("{}, language {:?}", c.model_dir, c.language)),
            Self::SenseVoice(c) => ("sensevoice_onnx", format!("{}, language {}", c.model_dir, c.language)),
            Self::FunServer(cfg) => ("fun_server", cfg.summary()),
            Self::DoubaoStream(cfg) => ("doubao_stream", cfg.summary()),
            Self::AliyunStream(cfg) => ("aliyun_stream", cfg.summary()),
            Self::AliyunBlStream(cfg) => ("aliyunbl_stream", cfg.summary()),
            Self::Qwen3AsrFlash(cfg) => ("qwen3_asr_flash", cfg.summary()),
            Self::XunfeiStream(cfg) => ("xunfei_stream", cfg.summary()),
            Self::Tencent(cfg) => ("tencent", cfg.summary()),
        }
    }
}

/// An LLM entry, by `type`.
#[derive(Debug, Clone)]
pub enum LlmSpec {
    /// `type: openai` (also `ollama`, `xinference`) — OpenAI-compatible chat completions.
    OpenAi(OpenAiLlmConfig),
    /// `type: dify` — a Dify app.
    Dify(crate::llm::dify::Config),
    /// `type: coze` — a Coze bot.
    Coze(crate::llm::coze::Config),
    /// `type: fastgpt` — a FastGPT app.
    FastGpt(crate::llm::fastgpt::Config),
    /// `type: AliBL` — an Aliyun Bailian (DashScope) app.
    AliBl(crate::llm::alibl::Config),
    /// `type: gemini` — Google Gemini (native API).
    Gemini(crate::llm::gemini::Config),
}

impl Default for LlmSpec {
    fn default() -> Self {
        Self::OpenAi(OpenAiLlmConfig::default())
    }
}

impl LlmSpec {
    /// The `type` this spec runs and one line about its settings (no secrets), for
    /// `check-config`.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Self::OpenAi(c) => ("openai", format!("model {}, at {}", c.model_name, c.base_url)),
            Self::Dify(cfg) => ("dify", cfg.summary()),
            Self::Coze(cfg) => ("coze", cfg.summary()),
            Self::FastGpt(cfg) => ("fastgpt", cfg.summary()),
            Self::AliBl(cfg) => ("AliBL", cfg.summary()),
            Self::Gemini(cfg) => ("gemini", cfg.summary()),
        }
    }
}

/// A TTS entry, by `type`.
#[derive(Debug, Clone)]
pub enum TtsSpec {
    /// `type: openai` — POST `/v1/audio/speech`.
    OpenAi(OpenAiTtsConfig),
    /// `type: custom` — a templated HTTP request that returns audio.
    Custom(CustomTtsConfig),
    /// `type: piper` — a Piper (VITS) voice in process, phonemes from espeak-ng.
    Piper(PiperConfig),
    /// `type: edge` — Microsoft Edge read-aloud voices.
    Edge(crate::tts::edge::Config),
    /// `type: doubao` — Volcengine (Doubao) speech synthesis over HTTP.
    Doubao(crate::tts::doubao::Config),
    /// `type: huoshan_double_stream` — Volcengine bidirectional streaming synthesis.
    HuoshanDoubleStream(crate::tts::huoshan_double_stream::Config),
    /// `type: aliyun_stream` — Aliyun NLS CosyVoice streaming synthesis.
    AliyunStream(crate::tts::aliyun_stream::Config),
    /// `type: alibl_stream` — Aliyun Bailian (DashScope) CosyVoice streaming synthesis.
    AliBlStream(crate::tts::alibl_stream::Config),
    /// `type: siliconflow` — SiliconFlow speech (CosyVoice2).
    SiliconFlow(crate::tts::siliconflow::Config),
    /// `type: minimax_httpstream` — MiniMax T2A streamed over HTTP.
    MinimaxHttpStream(crate::tts::minimax_httpstream::Config),
    /// `type: gpt_sovits_v2` — a GPT-SoVITS api_v2 server.
    GptSovitsV2(crate::tts::gpt_sovits_v2::Config),
    /// `type: gpt_sovits_v3` — a GPT-SoVITS v3 api server.
    GptSovitsV3(crate::tts::gpt_sovits_v3::Config),
    /// `type: fishspeech` — a Fish Speech server.
    FishSpeech(crate::tts::fishspeech::Config),
    /// `type: xunfei_stream` — iFlytek (Xunfei) streaming synthesis.
    XunfeiStream(crate::tts::xunfei_stream::Config),
    /// `type: tencent` — Tencent Cloud speech synthesis.
    Tencent(crate::tts::tencent::Config),
}

impl Default for TtsSpec {
    fn default() -> Self {
        Self::Piper(PiperConfig::default())
    }
}

impl TtsSpec {
    /// The `type` this spec runs and one line about its settings (no secrets), for
    /// `check-config`.
    pub fn describe(&self) -> (&'static str, String) {
        match self {
            Self::OpenAi(c) => {
                ("openai", format!("model {}, voice {}, format {}, at {}", c.model, c.voice, c.format, c.api_url))
            }
            Self::Custom(c) => ("custom", format!("{} {}, format {}", c.method, c.url, c.format)),
            Self::Piper(c) => ("piper", c.model.clone()),
            Self::Edge(cfg) => ("edge", cfg.summary()),
            Self::Doubao(cfg) => ("doubao", cfg.summary()),
            Self::HuoshanDoubleStream(cfg) => ("huoshan_double_stream", cfg.summary()),
            Self::AliyunStream(cfg) => ("aliyun_stream", cfg.summary()),
            Self::AliBlStream(cfg) => ("alibl_stream", cfg.summary()),
            Self::SiliconFlow(cfg) => ("siliconflow", cfg.summary()),
            Self::MinimaxHttpStream(cfg) => ("minimax_httpstream", cfg.summary()),
            Self::GptSovitsV2(cfg) => ("gpt_sovits_v2", cfg.summary()),
            Self::GptSovitsV3(cfg) => ("gpt_sovits_v3", cfg.summary()),
            Self::FishSpeech(cfg) => ("fishspeech", cfg.summary()),
            Self::XunfeiStream(cfg) => ("xunfei_stream", cfg.summary()),
            Self::Tencent(cfg) => ("tencent", cfg.summary()),
        }
    }
}

/// How tools reach the model, from the selected `Intent` entry's `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum IntentMode {
    /// `nointent`: plain chat, no tools offered.
    NoIntent,
    /// `function_call`: tools offered through the model's native function calling.
    #[default]
    FunctionCall,
    /// Any other type (`intent_llm`, ...): the intent extension with this id decides, before the
    /// chat LLM runs, whether the utterance calls a tool, gets a direct reply, ends the
    /// conversation or goes to plain chat (which is then offered no tools, as in the Python
    /// server). While no such extension serves, turns fall back to `function_call`.
    Extension(String),
}

/// Conversation memory, from the selected `Memory` entry's `type`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MemoryMode {
    /// `nomem` (or `mem_report_only`): nothing is remembered between connections.
    #[default]
    NoMem,
    /// Any other type (`mem_local_short`, ...): the memory extension with this id is asked for
    /// what it knows on every turn (put into the system prompt) and given the dialogue when the
    /// connection ends. While no such extension serves, nothing is remembered.
    Extension(String),
}

impl Config {
    /// What each extension is granted: `extensions.grants`, and for every `plugins.<id>` (the
    /// Python server's plugin settings) its settings as the extension's config (strings as they
    /// are, other values as JSON; a key also set in `extensions.grants.<id>.config` keeps that
    /// value), the hosts named in them, the hosts of the extension's own manifest, and a setting
    /// `<name>_dir` (`music_dir: ./music`) as the media directory `<name>`.
    pub fn extension_grants(&self) -> BTreeMap<String, Grant> {
        let mut grants = self.extensions.grants.clone();
        for (id, settings) in &self.plugins {
            let grant = grants.entry(id.clone()).or_default();
            grant.from_plugins = true;
            if let Some(mapping) = settings.as_mapping() {
                for (key, value) in mapping {
                    let Some(key) = key.as_str() else { continue };
                    let text = match value {
                        serde_yaml_ng::Value::String(text) => text.clone(),
                        serde_yaml_ng::Value::Null => continue,
                        other => serde_json::to_string(other).unwrap_or_default(),
                    };
                    if let Some(name) = key.strip_suffix("_dir")
                        && !name.is_empty()
                        && value.is_string()
                    {
                        grant.media_dirs.entry(name.to_owned()).or_insert_with(|| text.clone().into());
                    }
                    grant.config.entry(key.to_owned()).or_insert(text);
                }
            }
            for host in plugin_hosts(settings) {
                if !grant.http_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
                    grant.http_hosts.push(host);
                }
            }
        }
        grants
    }

    /// The `tracing_subscriber::EnvFilter` directive for `log.log_level`.
    ///
    /// The Python server's upper-case names work (`DEBUG`, `INFO`, `WARNING`, `ERROR`,
    /// `CRITICAL`), as do the `tracing` names in any case; anything else (for example
    /// `info,xiaozhi_server=debug`) is passed through as a filter directive. Empty means `info`.
    pub fn log_filter(&self) -> String {
        let raw = self.log.log_level.trim();
        match level_name(raw) {
            Some(level) => level.to_owned(),
            None => raw.to_owned(),
        }
    }

    /// The secret for device tokens: `server.auth_key`, else `manager-api.secret`, else `None`
    /// (the caller then uses a random per-process key, as the Python server does).
    ///
    /// Like the Python server, a value containing `你` is the shipped placeholder and counts as
    /// unset.
    pub fn auth_key(&self) -> Option<String> {
        [&self.server.auth_key, &self.manager_api.secret]
            .into_iter()
            .map(|key| key.trim())
            .find(|key| !key.is_empty() && !key.contains('你'))
            .map(str::to_owned)
    }

    /// The ONNX Runtime shared library: `models.onnxruntime`, or
    /// `<models.dir>/lib/libonnxruntime.so` when that is empty (`.dylib` on macOS, `.dll` on
    /// Windows).
    pub fn onnxruntime_path(&self) -> PathBuf {
        if self.models.onnxruntime.as_os_str().is_empty() {
            let file = if cfg!(target_os = "macos") {
                "libonnxruntime.dylib"
            } else if cfg!(windows) {
                "onnxruntime.dll"
            } else {
                "libonnxruntime.so"
            };
            self.models.dir.join("lib").join(file)
        } else {
            self.models.onnxruntime.clone()
        }
    }
}

/// The host names a plugin's settings name: the values of keys ending in `host`, and the hosts of
/// values that are http(s) URLs (lower case, without port).
pub fn plugin_hosts(settings: &serde_yaml_ng::Value) -> std::collections::BTreeSet<String> {
    let mut hosts = std::collections::BTreeSet::new();
    let Some(mapping) = settings.as_mapping() else { return hosts };
    for (key, value) in mapping {
        let (Some(key), Some(text)) = (key.as_str(), value.as_str()) else { continue };
        if let Some(host) = host_of(text, key.ends_with("host")) {
            hosts.insert(host);
        }
    }
    hosts
}

/// The host of `text`: of a URL, or (when `bare` is allowed) the text itself when it is a host
/// name (an optional scheme, port or path is removed).
pub fn host_of(text: &str, bare: bool) -> Option<String> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let url = if text.contains("://") {
        text.to_owned()
    } else if bare {
        format!("https://{text}")
    } else {
        return None;
    };
    let parsed = reqwest::Url::parse(&url).ok()?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return None;
    }
    parsed.host_str().map(str::to_ascii_lowercase)
}

/// Maps a level name (the Python server's or `tracing`'s, any case) to the `tracing` name.
/// `None` when `raw` is not a bare level name. An empty name means `info`.
pub(crate) fn level_name(raw: &str) -> Option<&'static str> {
    let level = match raw.trim().to_ascii_lowercase().as_str() {
        "" | "info" => "info",
        "trace" => "trace",
        "debug" => "debug",
        "warn" | "warning" => "warn",
        "error" | "critical" | "fatal" => "error",
        "off" => "off",
        _ => return None,
    };
    Some(level)
}

/// `VAD.<name>` with `type: silero`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SileroVadConfig {
    /// Probability at or above which a window is speech.
    pub threshold: f32,
    /// Probability below which a window is silence once speech has started (hysteresis).
    pub threshold_low: f32,
    /// Directory holding `silero_vad.onnx`; empty = `models.dir`.
    pub model_dir: String,
    /// Silence, in audio time, that ends an utterance.
    pub min_silence_duration_ms: u32,
    /// Audio kept from before speech starts, handed to ASR with the utterance.
    pub pre_roll_ms: u32,
}

/// `ASR.<name>` with `type: openai`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiAsrConfig {
    /// Bearer token.
    pub api_key: String,
    /// The API root (`…/v1`) or the full transcription URL (`…/v1/audio/transcriptions`).
    pub base_url: String,
    /// Model name.
    pub model_name: String,
    /// Language hint (ISO 639-1), optional.
    pub language: Option<String>,
    /// Seconds the request may take.
    pub timeout: u64,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
}

/// `LLM.<name>` with `type: openai`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiLlmConfig {
    /// Bearer token.
    pub api_key: String,
    /// The API root (`…/v1`); `/chat/completions` is appended unless already there.
    pub base_url: String,
    /// Model name.
    pub model_name: String,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Penalty on repeated tokens (-2 to 2).
    pub frequency_penalty: Option<f32>,
    /// Answer length cap.
    pub max_tokens: Option<u32>,
    /// Seconds until the first streamed byte, and between bytes.
    pub timeout: u64,
}

/// `VLLM.<name>` with `type: openai`: an OpenAI-compatible vision chat model (the Python
/// server's only VLLM type; `url` is read as `base_url`).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct VllmConfig {
    /// Bearer token.
    pub api_key: String,
    /// The API root (`…/v1`); `/chat/completions` is appended unless already there.
    pub base_url: String,
    /// Model name.
    pub model_name: String,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Answer length cap.
    pub max_tokens: Option<u32>,
}

/// `TTS.<name>` with `type: openai`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiTtsConfig {
    /// Bearer token.
    pub api_key: String,
    /// The full speech URL (`…/v1/audio/speech`) or the API root (`…/v1`).
    pub api_url: String,
    /// Model name.
    pub model: String,
    /// Voice name.
    pub voice: String,
    /// Speaking speed.
    pub speed: f32,
    /// `wav`, `mp3` or `pcm` (16-bit little-endian mono at `sample_rate`).
    pub format: String,
    /// Sample rate of `pcm` answers.
    pub sample_rate: u32,
    /// Seconds one sentence may take.
    pub timeout: u64,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
}

/// `TTS.<name>` with `type: custom` — the Python server's templated HTTP TTS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct CustomTtsConfig {
    /// `GET` (params as query string) or `POST` (params as JSON body).
    pub method: String,
    /// The endpoint.
    pub url: String,
    /// Request parameters; any string value containing `{prompt_text}` gets the sentence.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// `wav`, `mp3` or `pcm` (16-bit little-endian mono at `sample_rate`).
    pub format: String,
    /// Sample rate of `pcm` answers.
    pub sample_rate: u32,
    /// Seconds one sentence may take.
    pub timeout: u64,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
}

/// `ASR.<name>` with `type: whisper_onnx`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WhisperConfig {
    /// Directory in the Hugging Face ONNX layout: `config.json`, `generation_config.json`,
    /// `tokenizer.json` and `onnx/encoder_model*.onnx` with `onnx/decoder_model_merged*.onnx` or
    /// the `decoder_model*` / `decoder_with_past_model*` pair.
    pub model_dir: String,
    /// Spoken language (ISO 639-1, e.g. `en`, `zh`, `de`) for multilingual models; empty or
    /// `auto` = detected by the model. English-only models ignore it.
    pub language: String,
    /// `transcribe`, or `translate` (into English; multilingual models only).
    pub task: String,
    /// Most tokens generated for one utterance.
    pub max_tokens: u32,
    /// ONNX Runtime intra-op threads for this model.
    pub threads: u16,
}

/// `ASR.<name>` with `type: sensevoice_onnx`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SenseVoiceConfig {
    /// Directory holding `model.onnx` (or `model.int8.onnx`) and `tokens.txt`.
    pub model_dir: String,
    /// `auto`, `zh`, `en`, `yue`, `ja` or `ko`.
    pub language: String,
    /// Inverse text normalisation (punctuation and numbers in the output).
    pub use_itn: bool,
    /// ONNX Runtime intra-op threads for this model.
    pub threads: u16,
    /// Python server compatibility; not used (no audio is written).
    pub output_dir: Option<String>,
}

/// `TTS.<name>` with `type: piper`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PiperConfig {
    /// The voice model (`*.onnx`); relative paths are taken from the working directory.
    pub model: String,
    /// The voice config; empty = `<model>.json`.
    pub config: String,
    /// Speaker id of multi-speaker voices.
    pub speaker_id: Option<i64>,
    /// Speaking rate: > 1 is slower; empty = the voice's own setting.
    pub length_scale: Option<f32>,
    /// Generator noise; empty = the voice's own setting.
    pub noise_scale: Option<f32>,
    /// Phoneme duration noise; empty = the voice's own setting.
    pub noise_w: Option<f32>,
    /// The espeak-ng program used for phonemes.
    pub espeak: String,
    /// ONNX Runtime intra-op threads for this model.
    pub threads: u16,
}

impl std::fmt::Debug for OpenAiAsrConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_without_key(self, f)
    }
}

impl std::fmt::Debug for OpenAiLlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_without_key(self, f)
    }
}

impl std::fmt::Debug for OpenAiTtsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_without_key(self, f)
    }
}

/// `Debug` of a provider entry with its `api_key` hidden (`***` when set).
fn debug_without_key<T: Serialize>(value: &T, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    let Ok(mut json) = serde_json::to_value(value) else { return f.write_str("{..}") };
    if let Some(key) = json.get_mut("api_key").filter(|k| k.as_str().is_some_and(|k| !k.is_empty())) {
        *key = "***".into();
    }
    write!(f, "{json}")
}

impl std::fmt::Debug for VllmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        debug_without_key(self, f)
    }
}
