//! Defaults for every config section. They match the documented `config.yaml` at the repository
//! root, so a partial file (or none of a section) behaves like the Python server's defaults.
//! The provider dictionaries default to the entries `selected_module` names by default, so
//! `Config::default()` resolves to `Providers::default()`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml_ng::Value;

use super::*;

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            log: LogConfig::default(),
            delete_audio: true,
            close_connection_no_voice_time: 120,
            tts_timeout: 10,
            tool_call_timeout: 30,
            enable_greeting: true,
            exit_commands: vec!["退出".into(), "关闭".into()],
            wakeup_words: [
                "你好小智",
                "嘿你好呀",
                "你好小志",
                "小爱同学",
                "你好小鑫",
                "你好小新",
                "小美同学",
                "小龙小龙",
                "喵喵同学",
                "小滨小滨",
                "小冰小冰",
            ]
            .into_iter()
            .map(String::from)
            .collect(),
            xiaozhi: HelloTemplate::default(),
            prompt: "You are Xiaozhi, a friendly voice assistant. Answer briefly, in one to three short sentences, \
                     in the language the user speaks. Begin every answer with one emoji that shows your mood."
                .into(),
            end_prompt: EndPrompt::default(),
            system_error_response: "Sorry, I can't answer right now. Please try again in a moment.".into(),
            selected_module: SelectedModule::default(),
            vad: dictionary([(
                "SileroVAD",
                entry([
                    ("type", "silero".into()),
                    ("threshold", 0.5.into()),
                    ("threshold_low", 0.3.into()),
                    ("model_dir", "models".into()),
                    ("min_silence_duration_ms", 500.into()),
                    ("pre_roll_ms", 1000.into()),
                ]),
            )]),
            asr: dictionary([(
                "OpenaiASR",
                entry([
                    ("type", "openai".into()),
                    ("api_key", "".into()),
                    ("base_url", "https://api.openai.com/v1/audio/transcriptions".into()),
                    ("model_name", "gpt-4o-mini-transcribe".into()),
                ]),
            )]),
            llm: dictionary([(
                "OpenAILLM",
                entry([
                    ("type", "openai".into()),
                    ("base_url", "https://api.openai.com/v1".into()),
                    ("model_name", "gpt-4o-mini".into()),
                    ("api_key", "".into()),
                ]),
            )]),
            tts: dictionary([
                (
                    "PiperLocal",
                    entry([("type", "piper".into()), ("model", "models/piper/en_US-joe-medium.onnx".into())]),
                ),
                (
                    "OpenAITTS",
                    entry([
                        ("type", "openai".into()),
                        ("api_key", "".into()),
                        ("api_url", "https://api.openai.com/v1/audio/speech".into()),
                        ("model", "tts-1".into()),
                        ("voice", "onyx".into()),
                        ("speed", 1.into()),
                        ("format", "wav".into()),
                        ("output_dir", "tmp/".into()),
                    ]),
                ),
            ]),
            memory: dictionary([
                ("nomem", entry([("type", "nomem".into())])),
                ("mem_local_short", entry([("type", "mem_local_short".into())])),
            ]),
            intent: dictionary([
                ("nointent", entry([("type", "nointent".into())])),
                ("function_call", entry([("type", "function_call".into())])),
                ("intent_llm", entry([("type", "intent_llm".into())])),
            ]),
            vllm: dictionary([(
                "OpenAIVLLM",
                entry([
                    ("type", "openai".into()),
                    ("base_url", "https://api.openai.com/v1".into()),
                    ("model_name", "gpt-4o-mini".into()),
                    ("api_key", "".into()),
                ]),
            )]),
            audio: AudioConfig::default(),
            models: ModelsConfig::default(),
            activation: ActivationConfig::default(),
            manager_api: ManagerApiConfig::default(),
            extensions: ExtensionsConfig::default(),
            plugins: BTreeMap::from([(
                "play_music".to_owned(),
                serde_yaml_ng::from_str("music_dir: ./music").unwrap_or_default(),
            )]),
            store: StoreConfig::default(),
            limits: LimitsConfig::default(),
            console: ConsoleConfig::default(),
            mqtt: MqttConfig::default(),
            providers: Providers::default(),
        }
    }
}

/// A provider dictionary from `(name, entry)` pairs.
fn dictionary<const N: usize>(entries: [(&str, Value); N]) -> BTreeMap<String, Value> {
    entries.into_iter().map(|(name, entry)| (name.to_owned(), entry)).collect()
}

/// A provider entry (a YAML mapping) from `(key, value)` pairs.
fn entry<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Mapping(pairs.into_iter().map(|(key, value)| (Value::from(key), value)).collect())
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            ip: "0.0.0.0".into(),
            port: 8000,
            http_port: 8003,
            websocket: String::new(),
            vision_explain: String::new(),
            timezone_offset: 8,
            auth: AuthConfig::default(),
            auth_key: String::new(),
            mqtt_gateway: String::new(),
            mqtt_signature_key: String::new(),
            admin_token: String::new(),
            mcp_endpoint_path: "/mcp_endpoint/mcp".into(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self { enabled: false, allowed_devices: Vec::new(), expire_seconds: Some(2_592_000) }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { log_level: "INFO".into() }
    }
}

impl Default for HelloTemplate {
    fn default() -> Self {
        Self { kind: "hello".into(), version: 1, transport: "websocket".into(), audio_params: AudioParams::default() }
    }
}

impl Default for AudioParams {
    fn default() -> Self {
        Self { format: "opus".into(), sample_rate: 24_000, channels: 1, frame_duration: 60 }
    }
}

impl Default for EndPrompt {
    fn default() -> Self {
        Self {
            enable: true,
            prompt: "Time flies. Say goodbye to the user warmly, in one short sentence, to end this conversation."
                .into(),
        }
    }
}

impl Default for SelectedModule {
    fn default() -> Self {
        Self {
            vad: "SileroVAD".into(),
            asr: "OpenaiASR".into(),
            llm: "OpenAILLM".into(),
            tts: "PiperLocal".into(),
            memory: "nomem".into(),
            intent: "function_call".into(),
            vllm: "OpenAIVLLM".into(),
        }
    }
}

impl Default for AudioConfig {
    fn default() -> Self {
        Self { opus_bitrate: 24_000, opus_complexity: 5, prebuffer_frames: 5 }
    }
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("models"), onnxruntime: PathBuf::new() }
    }
}

impl Default for ManagerApiConfig {
    fn default() -> Self {
        Self { url: String::new(), secret: String::new(), timeout: 30, max_retries: 6, retry_delay: 10 }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            kind: StoreKind::Embedded,
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "xiaozhi:".into(),
            path: PathBuf::from("store.sqlite3"),
            history_limit: 200,
            start_degraded: false,
            outage_buffer: 10_000,
            timeout_ms: 1000,
            instance_id: String::new(),
        }
    }
}

impl Default for ExtensionsConfig {
    fn default() -> Self {
        Self {
            dirs: vec![PathBuf::from("extensions")],
            cache_dir: PathBuf::from("data/.cache/extensions"),
            // The built-in intent and memory extensions get what they need; they only run when
            // selected.
            grants: BTreeMap::from([
                ("intent_llm".to_owned(), Grant { llm: true, ..Grant::default() }),
                ("mem_local_short".to_owned(), Grant { kv: true, llm: true, ..Grant::default() }),
                ("get_news_from_chinanews".to_owned(), Grant { kv: true, llm: true, ..Grant::default() }),
                ("get_news_from_newsnow".to_owned(), Grant { kv: true, llm: true, ..Grant::default() }),
            ]),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            hello_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            outbound_queue_bytes: 1024 * 1024,
            socket_send_buffer_bytes: 64 * 1024,
            device_tools: 128,
            tool_name_chars: 64,
            tool_result_chars: 8000,
            sentence_chars: 300,
            media_file_bytes: 64 * 1024 * 1024,
            media_seconds: 1200,
            history_entry_bytes: 16 * 1024,
            kv_bytes_per_extension: 64 * 1024 * 1024,
            kv_keys_per_device: 1024,
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 30_000,
            activation_code_ttl: 3600,
            new_devices_per_ip_per_minute: 10,
            vision_body_bytes: 5 * 1024 * 1024,
            vision_timeout_ms: 30_000,
            vision_token_seconds: 3600,
            vision_requests: 8,
            device_mcp_wait_ms: 500,
            device_mcp_timeout_ms: 2000,
            mcp_endpoint_clients: 256,
            mcp_endpoint_clients_per_token: 16,
            mcp_endpoint_tools: 128,
            mcp_endpoint_message_bytes: 1024 * 1024,
            mcp_endpoint_call_timeout_ms: 30_000,
            mcp_servers: 32,
            mcp_server_tools: 128,
            mcp_server_start_timeout_ms: 10_000,
            mcp_server_call_timeout_ms: 30_000,
            mcp_server_restart_ms: 1000,
            mqtt_clients: 10_000,
            mqtt_connect_timeout_ms: 10_000,
            mqtt_packet_bytes: 64 * 1024,
            udp_channel_timeout: 120,
        }
    }
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        Self { password: String::new(), path: "/console".into(), session_hours: 12 }
    }
}

impl Default for ActivationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            message: "Bind this device with: xiaozhi-server bind {code}".into(),
            hmac_keys: BTreeMap::new(),
        }
    }
}

impl Default for SileroVadConfig {
    fn default() -> Self {
        Self {
            threshold: 0.5,
            threshold_low: 0.3,
            model_dir: "models".into(),
            min_silence_duration_ms: 500,
            pre_roll_ms: 1000,
        }
    }
}

impl Default for OpenAiAsrConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            base_url: "https://api.openai.com/v1/audio/transcriptions".into(),
            model_name: "gpt-4o-mini-transcribe".into(),
            language: None,
            timeout: 30,
            output_dir: None,
        }
    }
}

impl Default for OpenAiLlmConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            base_url: "https://api.openai.com/v1".into(),
            model_name: "gpt-4o-mini".into(),
            temperature: None,
            top_p: None,
            frequency_penalty: None,
            max_tokens: None,
            timeout: 30,
        }
    }
}

impl Default for OpenAiTtsConfig {
    fn default() -> Self {
        Self {
            api_key: String::new(),
            api_url: "https://api.openai.com/v1/audio/speech".into(),
            model: "tts-1".into(),
            voice: "alloy".into(),
            speed: 1.0,
            format: "wav".into(),
            sample_rate: 24_000,
            timeout: 10,
            output_dir: None,
        }
    }
}

impl Default for CustomTtsConfig {
    fn default() -> Self {
        Self {
            method: "GET".into(),
            url: String::new(),
            params: BTreeMap::new(),
            headers: BTreeMap::new(),
            format: "wav".into(),
            sample_rate: 16_000,
            timeout: 10,
            output_dir: None,
        }
    }
}

impl Default for WhisperConfig {
    fn default() -> Self {
        Self {
            model_dir: "models/whisper-tiny-en".into(),
            language: String::new(),
            task: "transcribe".into(),
            max_tokens: 224,
            threads: 1,
        }
    }
}

impl Default for SenseVoiceConfig {
    fn default() -> Self {
        Self {
            model_dir: "models/sensevoice".into(),
            language: "auto".into(),
            use_itn: true,
            threads: 1,
            output_dir: None,
        }
    }
}

impl Default for PiperConfig {
    fn default() -> Self {
        Self {
            model: "models/piper/en_US-joe-medium.onnx".into(),
            config: String::new(),
            speaker_id: None,
            length_scale: None,
            noise_scale: None,
            noise_w: None,
            espeak: "espeak-ng".into(),
            threads: 1,
        }
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            port: 1883,
            udp_port: 8884,
            endpoint: String::new(),
            udp_host: String::new(),
            keepalive: 240,
            broker: String::new(),
            broker_username: String::new(),
            broker_password: String::new(),
            share_group: "xiaozhi".into(),
        }
    }
}
