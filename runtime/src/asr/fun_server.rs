//! `type: fun_server`: a FunASR runtime server (the `funasr-runtime-sdk` Docker images), over its
//! WebSocket protocol.
//!
//! FunASR's "WebSocket/gRPC Communication Protocol" (`runtime/docs/websocket_protocol.md` of
//! modelscope/FunASR): the client opens `ws(s)://host:port`, sends a JSON text message
//! `{"mode": "offline"|"online"|"2pass", "chunk_size": [5,10,5], "chunk_interval": 10,
//! "wav_name", "wav_format": "pcm", "audio_fs": 16000, "is_speaking": true, "itn", "hotwords"}`,
//! then the 16 kHz PCM as binary messages, and `{"is_speaking": false}` at the end of speech. The
//! server answers JSON `{"mode", "text", "wav_name", "is_final", "timestamp"}`: the offline server
//! one `mode: "offline"` result after the end (its `is_final` is always false); the 2pass server
//! `2pass-online` partials while the audio comes, a `2pass-offline` correction per segment, and
//! `is_final: true` on the last one. The final text is the offline results put together.
//!
//! Audio goes out as the user speaks (each pushed frame is one binary message), so the server
//! has it all when the speech ends. The Python entry's keys: `host`, `port`, `is_ssl` (`wss`;
//! the server's certificate is usually self-signed and, as the Python server does, is not
//! verified), `api_key` (sent as `Authorization: Bearer; <api_key>`, the Python provider's
//! header, for a proxy in front of the server) and `output_dir`. Ours: `mode` (`offline` as the
//! Python provider; `2pass` for the online server), `itn`, `hotwords`, `timeout`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::{Asr, Recognition};
use crate::remote::pyconf;
use crate::remote::{MAX_WS_MESSAGE_BYTES, ProviderError, WsStream, error_chain, timeout_from, ws_connect};

/// `ASR.<name>` with `type: fun_server`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// The server's host.
    #[serde(deserialize_with = "pyconf::text")]
    pub host: String,
    /// The server's port (10095 for the offline server, 10096 for the 2pass one).
    #[serde(deserialize_with = "pyconf::opt_i64")]
    pub port: Option<i64>,
    /// `wss` (the server's certificate is not verified) instead of `ws`.
    #[serde(deserialize_with = "pyconf::flag")]
    pub is_ssl: bool,
    /// Sent as `Authorization: Bearer; <api_key>` (the FunASR server itself does not check it).
    #[serde(deserialize_with = "pyconf::text")]
    pub api_key: String,
    /// Where the Python server saved the utterances (unused here).
    pub output_dir: Option<String>,
    /// `offline` (one result at the end), `2pass` or `online` (the online server).
    pub mode: String,
    /// Inverse text normalization (numbers as digits).
    #[serde(deserialize_with = "pyconf::flag")]
    pub itn: bool,
    /// Hot words, as the server takes them: `{"阿里巴巴": 20}` JSON or space-separated words.
    #[serde(deserialize_with = "pyconf::text")]
    pub hotwords: String,
    /// Seconds to wait for the connection and for each answer.
    pub timeout: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            host: "localhost".into(),
            port: None,
            is_ssl: true,
            api_key: "none".into(),
            output_dir: None,
            mode: "offline".into(),
            itn: false,
            hotwords: String::new(),
            timeout: 10,
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("is_ssl", &self.is_ssl)
            .field("api_key", &if self.api_key.is_empty() { "" } else { "<set>" })
            .field("mode", &self.mode)
            .field("itn", &self.itn)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// One line for `check-config`, without secrets.
    pub fn summary(&self) -> String {
        format!("{} ({})", self.url(), self.mode_name())
    }

    /// `ws(s)://host:port`.
    pub fn url(&self) -> String {
        let scheme = if self.is_ssl { "wss" } else { "ws" };
        let host = self.host.trim();
        let host = if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
        format!("{scheme}://{host}:{}", self.port.unwrap_or(10095))
    }

    fn mode_name(&self) -> String {
        let mode = self.mode.trim().to_ascii_lowercase();
        if mode.is_empty() { "offline".into() } else { mode }
    }

    /// The first message of a recognition.
    pub fn start_message(&self, wav_name: &str) -> Value {
        let mut message = json!({
            "mode": self.mode_name(),
            "chunk_size": [5, 10, 5],
            "chunk_interval": 10,
            "wav_name": wav_name,
            "wav_format": "pcm",
            "audio_fs": super::ASR_SAMPLE_RATE,
            "is_speaking": true,
            "itn": self.itn,
        });
        if !self.hotwords.trim().is_empty() {
            message["hotwords"] = json!(self.hotwords.trim());
        }
        message
    }
}

/// The end-of-speech message.
pub fn end_message() -> Value {
    json!({"is_speaking": false})
}

/// One answer of the server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Answer {
    /// `offline`, `online`, `2pass-online` or `2pass-offline`.
    #[serde(default)]
    pub mode: String,
    /// The text of this result.
    #[serde(default)]
    pub text: String,
    /// Whether this is the last result of the utterance.
    #[serde(default)]
    pub is_final: bool,
}

impl Answer {
    /// Parses a text message: an answer, or the server's `ERROR. …` text as an error.
    pub fn parse(text: &str, url: &str) -> Result<Self, ProviderError> {
        let answer: Answer = serde_json::from_str(text).map_err(|_| ProviderError::Protocol {
            url: url.to_owned(),
            message: format!("not a FunASR answer: {}", crate::remote::body_start(text.as_bytes())),
        })?;
        if answer.text.starts_with("ERROR.") {
            return Err(ProviderError::Protocol { url: url.to_owned(), message: format!("FunASR: {}", answer.text) });
        }
        Ok(answer)
    }
}

/// What the answers of one utterance add up to.
#[derive(Debug, Default)]
pub struct Transcript {
    offline: String,
    online: String,
}

impl Transcript {
    /// Adds an answer; true when it ends the utterance in `mode` (`offline`: its one result;
    /// otherwise the one marked final).
    pub fn add(&mut self, answer: &Answer, mode: &str) -> bool {
        if answer.mode.ends_with("offline") {
            self.offline.push_str(&answer.text);
        } else {
            self.online.push_str(&answer.text);
        }
        answer.is_final || (mode == "offline" && answer.mode == "offline")
    }

    /// The final text: the offline results, else the online ones; SenseVoice's leading tags
    /// (`<|zh|><|NEUTRAL|><|Speech|>…`) removed.
    pub fn text(&self) -> String {
        let text = if self.offline.trim().is_empty() { &self.online } else { &self.offline };
        strip_tags(text).trim().to_owned()
    }
}

/// `text` without SenseVoice's `<|…|>` tags.
fn strip_tags(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("<|") {
        match rest[start + 2..].find("|>") {
            Some(end) => {
                out.push_str(&rest[..start]);
                rest = &rest[start + 2 + end + 2..];
            }
            None => break,
        }
    }
    out.push_str(rest);
    out
}

/// A FunASR runtime server.
pub struct FunServerAsr {
    cfg: Config,
    url: String,
    timeout: Duration,
}

/// Builds the backend of a validated entry.
pub fn build(cfg: &Config) -> Result<Arc<dyn Asr>, ProviderError> {
    Ok(Arc::new(FunServerAsr::new(cfg.clone())?))
}

impl FunServerAsr {
    /// Validates the entry (host, port, mode, timeout).
    pub fn new(cfg: Config) -> Result<Self, ProviderError> {
        if cfg.host.trim().is_empty() {
            return Err(ProviderError::Config("ASR.fun_server: host is empty".into()));
        }
        if let Some(port) = cfg.port
            && !(1..=65_535).contains(&port)
        {
            return Err(ProviderError::Config(format!("ASR.fun_server: port {port} is invalid")));
        }
        if !matches!(cfg.mode_name().as_str(), "offline" | "online" | "2pass") {
            return Err(ProviderError::Config(format!(
                "ASR.fun_server: mode `{}` is not one of offline, online, 2pass",
                cfg.mode
            )));
        }
        let url = cfg.url();
        reqwest::Url::parse(&url)
            .map_err(|e| ProviderError::Config(format!("ASR.fun_server: `{url}` is invalid: {e}")))?;
        let timeout = timeout_from(cfg.timeout, "ASR.fun_server")?;
        Ok(Self { cfg, url, timeout })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn connect(&self) -> Result<WsStream, ProviderError> {
        let mut headers = Vec::new();
        let key = self.cfg.api_key.trim();
        if !key.is_empty() {
            headers.push(("Authorization", format!("Bearer; {key}")));
        }
        if self.cfg.is_ssl {
            connect_unverified(&self.url, &headers, self.timeout).await
        } else {
            ws_connect(&self.url, &headers, self.timeout, "FunASR connection").await
        }
    }

    async fn start(&self) -> Result<FunRecognition, ProviderError> {
        let ws = self.connect().await?;
        let (mut sink, stream) = ws.split();
        let wav_name = format!("xiaozhi-{}", uuid::Uuid::new_v4().simple());
        let start = self.cfg.start_message(&wav_name).to_string();
        send(&mut sink, Message::text(start), self.timeout, &self.url).await?;
        let (tx, rx) = mpsc::channel(64);
        let reader = tokio::spawn(read_answers(stream, tx, self.url.clone()));
        Ok(FunRecognition {
            sink,
            answers: rx,
            reader,
            transcript: Transcript::default(),
            mode: self.cfg.mode_name(),
            url: self.url.clone(),
            timeout: self.timeout,
        })
    }
}

#[async_trait]
impl Asr for FunServerAsr {
    async fn transcribe(&self, pcm: &[i16]) -> Result<String, ProviderError> {
        if pcm.is_empty() {
            return Ok(String::new());
        }
        let mut recognition = Box::new(self.start().await?);
        recognition.push(pcm).await?;
        recognition.finish().await
    }

    async fn open(&self) -> Option<Result<Box<dyn Recognition>, ProviderError>> {
        Some(self.start().await.map(|r| Box::new(r) as Box<dyn Recognition>))
    }
}

/// One utterance on its own connection. Dropping it closes the connection.
struct FunRecognition {
    sink: SplitSink<WsStream, Message>,
    answers: mpsc::Receiver<Result<Answer, ProviderError>>,
    reader: tokio::task::JoinHandle<()>,
    transcript: Transcript,
    mode: String,
    url: String,
    timeout: Duration,
}

impl Drop for FunRecognition {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn send(
    sink: &mut SplitSink<WsStream, Message>,
    message: Message,
    timeout: Duration,
    url: &str,
) -> Result<(), ProviderError> {
    match tokio::time::timeout(timeout, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ProviderError::Transport { url: url.to_owned(), message: error_chain(&e) }),
        Err(_) => Err(ProviderError::Timeout { what: "FunASR send".into(), seconds: timeout.as_secs() }),
    }
}

/// Reads the server's messages into `tx` until the connection ends (a close is an error: the
/// utterance's result did not come).
async fn read_answers(mut stream: SplitStream<WsStream>, tx: mpsc::Sender<Result<Answer, ProviderError>>, url: String) {
    while let Some(message) = stream.next().await {
        let item = match message {
            Ok(Message::Text(text)) => Answer::parse(&text, &url),
            Ok(Message::Close(frame)) => {
                let why = frame.map(|f| format!(" ({} {})", u16::from(f.code), f.reason)).unwrap_or_default();
                Err(ProviderError::Protocol {
                    url: url.clone(),
                    message: format!("the server closed the connection{why}"),
                })
            }
            Ok(_) => continue,
            Err(e) => Err(ProviderError::Transport { url: url.clone(), message: error_chain(&e) }),
        };
        let stop = item.is_err();
        if tx.send(item).await.is_err() || stop {
            return;
        }
    }
}

impl FunRecognition {
    /// Takes the answers that already came (partials) without waiting; an error ends the
    /// recognition early.
    fn take_ready(&mut self) -> Result<(), ProviderError> {
        while let Ok(item) = self.answers.try_recv() {
            let answer = item?;
            self.transcript.add(&answer, &self.mode);
        }
        Ok(())
    }
}

#[async_trait]
impl Recognition for FunRecognition {
    async fn push(&mut self, pcm: &[i16]) -> Result<(), ProviderError> {
        self.take_ready()?;
        if pcm.is_empty() {
            return Ok(());
        }
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        for piece in bytes.chunks(MAX_WS_MESSAGE_BYTES / 2) {
            send(&mut self.sink, Message::binary(piece.to_vec()), self.timeout, &self.url).await?;
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<String, ProviderError> {
        self.take_ready()?;
        send(&mut self.sink, Message::text(end_message().to_string()), self.timeout, &self.url).await?;
        loop {
            let item = match tokio::time::timeout(self.timeout, self.answers.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) => {
                    return Err(ProviderError::Protocol {
                        url: self.url.clone(),
                        message: "the connection ended without a result".into(),
                    });
                }
                Err(_) => {
                    return Err(ProviderError::Timeout {
                        what: "FunASR result".into(),
                        seconds: self.timeout.as_secs(),
                    });
                }
            };
            let answer = item?;
            if self.transcript.add(&answer, &self.mode) {
                break;
            }
        }
        // Done: close politely (best effort; dropping closes the socket anyway).
        let _ = tokio::time::timeout(Duration::from_millis(200), self.sink.send(Message::Close(None))).await;
        Ok(self.transcript.text())
    }
}

/// Opens `wss://` without verifying the server's certificate (FunASR servers ship a self-signed
/// one; the Python server does not verify it either). Only this provider uses it.
async fn connect_unverified(
    url: &str,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<WsStream, ProviderError> {
    use tokio_tungstenite::tungstenite;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let mut request =
        url.into_client_request().map_err(|e| ProviderError::Config(format!("ASR.fun_server: `{url}`: {e}")))?;
    for (name, value) in headers {
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|_| ProviderError::Config(format!("ASR.fun_server: the value of header `{name}` is invalid")))?;
        if let Ok(name) = reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
            request.headers_mut().insert(name, value);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| ProviderError::Config(format!("ASR.fun_server: TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        .with_no_client_auth();
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_WS_MESSAGE_BYTES));
    let connector = tokio_tungstenite::Connector::Rustls(Arc::new(tls));
    let connect = tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, Some(connector));
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => Err(ProviderError::Timeout { what: "FunASR connection".into(), seconds: timeout.as_secs().max(1) }),
        Ok(Ok((stream, _))) => Ok(stream),
        Ok(Err(tungstenite::Error::Http(response))) => Err(ProviderError::Status {
            url: url.to_owned(),
            status: response.status().as_u16(),
            body: response.body().as_deref().map(crate::remote::body_start).unwrap_or_default(),
        }),
        Ok(Err(e)) => Err(ProviderError::Transport { url: url.to_owned(), message: error_chain(&e) }),
    }
}

/// Accepts any server certificate (the handshake signatures are still checked).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    #[test]
    fn every_key_of_the_python_entry_is_known() {
        let cfg: Config = crate::remote::pyconf::python_entry("ASR", "FunASRServer");
        assert_eq!((cfg.url(), cfg.api_key.as_str()), ("wss://127.0.0.1:10096".to_owned(), "none"));
    }

    /// The Python server's `FunASRServer` entry.
    const PYTHON_ENTRY: &str = "host: 127.0.0.1\nport: 10096\nis_ssl: true\napi_key: none\noutput_dir: tmp/\n";

    #[test]
    fn messages_are_the_documented_ones() {
        let cfg: Config = serde_yaml_ng::from_str(PYTHON_ENTRY).expect("parses");
        assert_eq!(cfg.url(), "wss://127.0.0.1:10096");
        assert_eq!(
            cfg.start_message("xiaozhi-1"),
            json!({"mode": "offline", "chunk_size": [5, 10, 5], "chunk_interval": 10, "wav_name": "xiaozhi-1",
                   "wav_format": "pcm", "audio_fs": 16000, "is_speaking": true, "itn": false})
        );
        assert_eq!(end_message(), json!({"is_speaking": false}));
        let cfg: Config = serde_yaml_ng::from_str(
            "host: asr.local\nport: \"10095\"\nis_ssl: \"false\"\nmode: 2pass\nitn: true\nhotwords: '{\"小智\": 20}'",
        )
        .expect("parses");
        assert_eq!(cfg.url(), "ws://asr.local:10095");
        let start = cfg.start_message("w");
        assert_eq!(
            (start["mode"].clone(), start["itn"].clone(), start["hotwords"].clone()),
            (json!("2pass"), json!(true), json!("{\"小智\": 20}"))
        );
        assert!(!format!("{:?}", Config { api_key: "secret-key".into(), ..cfg }).contains("secret-key"));
        assert!(matches!(
            FunServerAsr::new(Config { mode: "fast".into(), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
        assert!(matches!(
            FunServerAsr::new(Config { port: Some(70_000), ..Config::default() }),
            Err(ProviderError::Config(_))
        ));
    }

    #[test]
    fn answers_add_up_to_the_final_text() {
        let url = "ws://x";
        // The offline server: one result, is_final false.
        let mut t = Transcript::default();
        let a = Answer::parse(r#"{"mode":"offline","text":"<|zh|><|NEUTRAL|><|Speech|><|withitn|>你好小智。","wav_name":"w","is_final":false}"#, url)
            .expect("answer");
        assert!(t.add(&a, "offline"));
        assert_eq!(t.text(), "你好小智。");
        // The 2pass server: partials, a segment's correction, then the final one.
        let mut t = Transcript::default();
        for (json, done) in [
            (r#"{"mode":"2pass-online","text":"今天","wav_name":"w","is_final":false}"#, false),
            (
                r#"{"mode":"2pass-offline","text":"今天天气","wav_name":"w","is_final":false,"timestamp":"[[100,200]]"}"#,
                false,
            ),
            (r#"{"mode":"2pass-online","text":"怎么","wav_name":"w","is_final":false}"#, false),
            (r#"{"mode":"2pass-offline","text":"怎么样？","wav_name":"w","is_final":true}"#, true),
        ] {
            assert_eq!(t.add(&Answer::parse(json, url).expect("answer"), "2pass"), done);
        }
        assert_eq!(t.text(), "今天天气怎么样？");
        // The server's error text, and garbage.
        let err = Answer::parse(
            r#"{"text":"ERROR. Real-time transcription service ONLY SUPPORT PCM stream.","wav_name":"w","is_final":true}"#,
            url,
        );
        assert!(matches!(err, Err(ProviderError::Protocol { message, .. }) if message.contains("ONLY SUPPORT PCM")));
        assert!(matches!(Answer::parse("nope", url), Err(ProviderError::Protocol { .. })));
    }

    /// A FunASR offline server on loopback (plain or TLS with a self-signed certificate): keeps
    /// the audio, answers its length once `is_speaking` is false; records what it got.
    #[allow(clippy::result_large_err)] // tungstenite's handshake callback type
    async fn server(tls: bool) -> (u16, mpsc::UnboundedReceiver<(Option<String>, Vec<Value>, usize)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::unbounded_channel();
        let acceptor = tls.then(|| {
            let cert = rcgen::generate_simple_self_signed(vec!["funasr.local".into()]).expect("cert");
            let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).expect("key");
            let config =
                rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .expect("versions")
                    .with_no_client_auth()
                    .with_single_cert(vec![cert.cert.der().clone()], key)
                    .expect("server config");
            tokio_rustls::TlsAcceptor::from(Arc::new(config))
        });
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let tx = tx.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut auth = None;
                    let callback =
                        |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                         resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                            auth = req.headers().get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned);
                            Ok(resp)
                        };
                    match acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(socket).await else { return };
                            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await else { return };
                            serve_offline(ws, auth, tx).await;
                        }
                        None => {
                            let Ok(ws) = tokio_tungstenite::accept_hdr_async(socket, callback).await else { return };
                            serve_offline(ws, auth, tx).await;
                        }
                    }
                });
            }
        });
        (port, rx)
    }

    async fn serve_offline<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut ws: tokio_tungstenite::WebSocketStream<S>,
        auth: Option<String>,
        tx: mpsc::UnboundedSender<(Option<String>, Vec<Value>, usize)>,
    ) {
        let (mut texts, mut bytes) = (Vec::new(), 0);
        while let Some(Ok(message)) = ws.next().await {
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap_or_default();
                    let end = value["is_speaking"] == false;
                    texts.push(value);
                    if end {
                        let answer = json!({"mode": "offline", "text": format!("{bytes} bytes"), "wav_name": "w", "is_final": false});
                        let _ = ws.send(Message::text(answer.to_string())).await;
                    }
                }
                Message::Binary(data) => bytes += data.len(),
                _ => break,
            }
        }
        let _ = tx.send((auth, texts, bytes));
    }

    #[tokio::test]
    async fn streams_the_audio_over_ws_and_over_unverified_wss() {
        for tls in [false, true] {
            let (port, mut got) = server(tls).await;
            let cfg = Config {
                host: "127.0.0.1".into(),
                port: Some(i64::from(port)),
                is_ssl: tls,
                api_key: "none".into(),
                ..Config::default()
            };
            let asr = FunServerAsr::new(cfg).expect("valid");
            let mut recognition = asr.open().await.expect("streaming").expect("connects");
            recognition.push(&[1i16; 960]).await.expect("push");
            recognition.push(&[2i16; 960]).await.expect("push");
            assert_eq!(recognition.finish().await.expect("text"), "3840 bytes", "tls {tls}");
            let (auth, texts, bytes) = got.recv().await.expect("the server's record");
            assert_eq!(auth.as_deref(), Some("Bearer; none"));
            assert_eq!(bytes, 3_840);
            assert_eq!(texts.len(), 2);
            assert_eq!(texts[0]["mode"], "offline");
            assert_eq!(texts[1], json!({"is_speaking": false}));
        }
    }

    #[tokio::test]
    async fn a_silent_or_closed_server_is_an_error() {
        // Accepts, then closes the connection at the end of speech without a result.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(socket).await else { return };
                    while let Some(Ok(message)) = ws.next().await {
                        if let Message::Text(text) = message
                            && text.contains("\"is_speaking\":false")
                        {
                            let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
                                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Error,
                                reason: "decoder failed".into(),
                            };
                            let _ = ws.close(Some(frame)).await;
                        }
                    }
                });
            }
        });
        let cfg = Config {
            host: "127.0.0.1".into(),
            port: Some(i64::from(port)),
            is_ssl: false,
            timeout: 2,
            ..Config::default()
        };
        let asr = FunServerAsr::new(cfg).expect("valid");
        match asr.transcribe(&[5i16; 1_600]).await {
            Err(ProviderError::Protocol { message, .. }) => assert!(message.contains("decoder failed"), "{message}"),
            other => panic!("{other:?}"),
        }
        // Nothing listening: a transport error.
        let cfg = Config { host: "127.0.0.1".into(), port: Some(1), is_ssl: false, timeout: 2, ..Config::default() };
        assert!(matches!(
            FunServerAsr::new(cfg).expect("valid").transcribe(&[1; 160]).await,
            Err(ProviderError::Transport { .. })
        ));
    }
}
