//! # xiaozhi-server
//!
//! A server for xiaozhi ESP32 voice assistants: devices stream 16 kHz Opus over a WebSocket (or
//! MQTT + encrypted UDP), the server finds the end of each utterance, transcribes it, asks an LLM (with tool calls into the
//! device over MCP), speaks the answer sentence by sentence and streams paced Opus back.
//!
//! # Layout
//!
//! The path of one utterance is a straight line through these modules:
//!
//! - [`config`]: the typed configuration, loaded from `config.yaml` with `data/.config.yaml`
//!   deep-merged over it, validated with the YAML path of every problem (all of them at once), and
//!   watched for changes; `config::migrate` knows the Python server's provider types and
//!   placeholders and writes the migration report of `check-config`.
//! - [`services`]: the config and providers a new session starts with (rebuilt on config change).
//! - [`server`]: the hyper accept loops (WebSocket port and HTTP port, header timeout, bounded
//!   socket buffers), routing, the WebSocket upgrade, the MQTT endpoint's start and graceful
//!   shutdown. It never parses frames or audio.
//! - [`http`]: the plain HTTP routes: OTA check, activation (codes, key proofs, the new-device
//!   rate limit), firmware download, health, the vision endpoint, the admin routes (metrics, extensions) behind
//!   the HTTP port and an admin token, and the console (`http::console`: sign-in, the JSON API
//!   for agents, devices, history, memory, firmware, figures, extensions and MCP tokens, and its
//!   plain HTML/CSS/JS pages from `runtime/console/` built into the binary, among them the talk
//!   page, a browser tab that is a device on the WebSocket protocol).
//! - [`auth`]: device tokens compatible with the Python server (HMAC-SHA256) and the allow-list.
//! - [`protocol`]: pure codecs: typed JSON messages both ways, binary frames v1/v2/v3, MCP JSON-RPC,
//!   the MQTT identity (client id, HMAC password) and the encrypted UDP audio packets.
//! - [`connection`]: owns the wire of one device: typed [`connection::Event`]s in, typed
//!   [`connection::Outbound`] messages out through one byte-bounded queue and one writer task
//!   (write deadline, close with a timeout); framing, protocol version and session id live only
//!   there. Two transports: the WebSocket (`connection::ws`), and MQTT for the JSON
//!   (`connection::mqtt`, the built-in endpoint: one client task per device, a session per hello;
//!   `connection::broker`, fleet mode: instances joined to an external broker, the registry
//!   deciding which serves a device) with UDP for the audio (`connection::udp`, one socket, a
//!   channel per session).
//! - [`session`]: the per-device task: [`session::state`] is its rules as a pure state machine
//!   (`step(event, now) → actions`), the rest performs the actions (listener: VAD, pre-roll,
//!   utterance buffer; turns; the registry).
//! - [`turn`]: one conversational reply, once the session's recognition (fed while the user
//!   spoke) gave the text and its rules accepted it: intent → LLM stream (tool calls) → sentences
//!   → TTS, each sentence streamed to the speaker from its first audio.
//! - [`speaker`]: the per-session audio output: streamed resampling, Opus encoding (or Opus passed
//!   through), real-time pacing and the encoder's complexity under load; the one owner of the
//!   device's speaking state (`tts` start / sentence_start / stop).
//! - [`audio`]: Opus codec wrappers, resampling (whole and streamed), decoding of audio files and
//!   of streamed answers (`chunks`), the pacer, Silero VAD and its pure end-of-speech rules
//!   (`endpoint`).
//! - [`asr`], [`llm`], [`tts`]: provider traits (streaming recognition, streamed speech, speech
//!   from text as it is written) and their backends, one file per Python `type` (local models,
//!   OpenAI-compatible APIs and the vendors' own protocols: Volcengine, Aliyun NLS and DashScope,
//!   iFlytek, Tencent, Edge, MiniMax, SiliconFlow, GPT-SoVITS, Fish Speech, FunASR, Dify, Coze,
//!   FastGPT, Gemini; the chat apps' conversation map in `llm/chat_app`); [`remote`]: the provider
//!   error type, the HTTP, SSE and WebSocket plumbing the remote backends share, what one vendor's
//!   providers share (`aliyun_nls` tokens and framing, `dashscope` tasks, `tencent_cloud` TC3
//!   signing, `xunfei` URL signing) and `pyconf`, the Python file's loosely typed values.
//! - [`text`]: sentence segmentation, emoji → emotion, markdown and `<think>` cleaning.
//! - [`mcp`]: the MCP client that talks to the device's tools over the session (its start-up
//!   bounded: a silent device is retried once, and never holds up a turn for long);
//!   [`mcp::endpoint`]: the MCP endpoint, where tool servers connect by WebSocket with a token
//!   (issued by the `mcp-token` subcommand, kept hashed in the store) and their tools are offered
//!   to the token's devices, with the same client; [`mcp::servers`]: the MCP servers of
//!   `data/.mcp_server_settings.json` (stdio, streamable HTTP, HTTP+SSE) on `rmcp`, supervised
//!   and restarted with back-off, the file re-read as it changes.
//! - [`vision`]: the camera's photos explained by the selected `VLLM`: the tokens devices get in
//!   MCP `initialize`, and the model call behind `POST /mcp/vision/explain` ([`http::vision`]).
//! - [`agents`]: per-device settings: agents (overrides merged over the configuration) and their
//!   devices, kept in the store; the providers of each agent in use built once.
//! - [`tools`]: the one registry of tools offered to the LLM (extension, device, settings-file MCP
//!   server and endpoint tools); a call's outcome is a list of effects, applied by the turn.
//! - [`media`]: audio an extension plays (a granted file or URL, or its own stream), decoded
//!   into chunks for the speaker.
//! - [`memory`]: conversation memory through a memory extension (into the prompt, saved at the end).
//! - [`extensions`]: the WebAssembly extension host (tool, intent, memory, context and media
//!   components; WIT 0.2, and 0.1 through an adapter).
//! - [`metrics`]: Prometheus metrics of the server (`GET /metrics`).
//! - [`store`]: persistent state (extension key/values, chat history, bindings, revocations, the
//!   device registry) in an embedded SQLite file or Redis.
//! - [`fuzz`]: the fuzz targets' entry points (`runtime/fuzz/`), replayed by a regression test.
//! - [`onnx`]: ONNX Runtime initialisation.
//! - [`tester`]: `test-provider`: one request to a configured provider entry, with its latency.
//! - [`simulator`]: a device simulator that speaks the firmware's protocol (used by the
//!   `simulate` subcommand and by the end-to-end tests).

pub mod agents;
pub mod asr;
pub mod audio;
pub mod auth;
pub mod config;
pub mod connection;
pub mod extensions;
pub mod fuzz;
pub mod http;
pub mod llm;
pub mod mcp;
pub mod media;
pub mod memory;
pub mod metrics;
pub mod onnx;
pub mod protocol;
pub mod remote;
pub mod server;
pub mod services;
pub mod session;
pub mod simulator;
pub mod speaker;
pub mod store;
pub mod tester;
pub mod text;
pub mod tools;
pub mod tts;
pub mod turn;
pub mod vision;
