//! A raw device connection for the attack tests: a WebSocket the test drives by hand, with none
//! of the simulator's manners. It can shrink its TCP receive buffer and simply stop reading (a
//! device whose queue backs up), send floods, or answer the server's MCP requests with whatever
//! an attacker would list.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A hand-driven device connection.
pub struct RawDevice {
    ws: WebSocketStream<TcpStream>,
}

/// How a [`RawDevice`] connects.
#[derive(Debug, Clone)]
pub struct RawOptions {
    /// `Device-Id`.
    pub device_id: String,
    /// `Client-Id`.
    pub client_id: String,
    /// The TCP receive buffer to ask the kernel for (small: the device's queue backs up as soon
    /// as it stops reading).
    pub recv_buffer: Option<u32>,
    /// A token, sent as `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

impl RawOptions {
    /// A device with this id and the kernel's buffers.
    pub fn device(device_id: &str) -> Self {
        Self {
            device_id: device_id.into(),
            client_id: "5f0c6a1e-7b2d-4c8e-9a41-3d2b6f9e0c17".into(),
            recv_buffer: None,
            token: None,
        }
    }
}

impl RawDevice {
    /// Connects to `ws_addr` (`/xiaozhi/v1/`) with the firmware's headers.
    pub async fn connect(ws_addr: SocketAddr, options: &RawOptions) -> anyhow::Result<Self> {
        let socket = if ws_addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(size) = options.recv_buffer {
            socket.set_recv_buffer_size(size)?;
        }
        let stream = socket.connect(ws_addr).await.context("TCP connect")?;
        let mut request = format!("ws://{ws_addr}/xiaozhi/v1/").into_client_request()?;
        let headers = request.headers_mut();
        headers.insert("Device-Id", options.device_id.parse()?);
        headers.insert("Client-Id", options.client_id.parse()?);
        headers.insert("Protocol-Version", "1".parse()?);
        if let Some(token) = &options.token {
            headers.insert("Authorization", format!("Bearer {token}").parse()?);
        }
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await.context("WebSocket upgrade")?;
        Ok(Self { ws })
    }

    /// Sends one text message.
    pub async fn send(&mut self, text: impl Into<String>) -> anyhow::Result<()> {
        self.ws.send(Message::text(text.into())).await.context("send")
    }

    /// Sends the firmware hello (with `features.mcp` when `mcp`) and waits for the server's.
    pub async fn hello(&mut self, mcp: bool) -> anyhow::Result<Value> {
        let features = if mcp { json!({"mcp": true}) } else { json!({}) };
        let hello = json!({"type": "hello", "version": 1, "features": features, "transport": "websocket",
            "audio_params": {"format": "opus", "sample_rate": 16000, "channels": 1, "frame_duration": 60}});
        self.send(hello.to_string()).await?;
        loop {
            match self.next_json(Duration::from_secs(10)).await? {
                Some(v) if v["type"] == "hello" => return Ok(v),
                Some(_) => {}
                None => bail!("closed before the server hello"),
            }
        }
    }

    /// The next JSON message, skipping binary frames; `None` when the connection ended.
    pub async fn next_json(&mut self, timeout: Duration) -> anyhow::Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.ws.next()).await.context("no message in time")?;
            match message {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(text))) => return Ok(Some(serde_json::from_str(text.as_str())?)),
                Some(Ok(_)) => {}
            }
        }
    }

    /// Reads until the connection ends (or `timeout`); whether it ended.
    pub async fn wait_closed(&mut self, timeout: Duration) -> bool {
        let ended = async {
            while let Some(Ok(message)) = self.ws.next().await {
                if message.is_close() {
                    break;
                }
            }
        };
        tokio::time::timeout(timeout, ended).await.is_ok()
    }

    /// Answers the server's MCP requests like a device whose tools are `list_page(cursor)`
    /// (a page of tools and the next cursor) and whose `tools/call` answer is `call(name)`,
    /// skipping everything else, until no message arrives for `quiet` or the connection ends.
    /// Returns how many `tools/list` pages were asked for.
    pub async fn serve_mcp(
        &mut self,
        quiet: Duration,
        mut list_page: impl FnMut(Option<&str>) -> (Vec<Value>, Option<String>),
        mut call: impl FnMut(&str) -> String,
    ) -> anyhow::Result<usize> {
        let mut pages = 0;
        loop {
            let message = match self.next_json(quiet).await {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => return Ok(pages),
            };
            if message["type"] != "mcp" {
                continue;
            }
            let payload = &message["payload"];
            let Some(id) = payload["id"].as_u64() else { continue };
            let result = match payload["method"].as_str() {
                Some("initialize") => json!({"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "attacker", "version": "1"}}),
                Some("tools/list") => {
                    pages += 1;
                    let (tools, next) = list_page(payload["params"]["cursor"].as_str());
                    match next {
                        Some(cursor) => json!({"tools": tools, "nextCursor": cursor}),
                        None => json!({"tools": tools}),
                    }
                }
                Some("tools/call") => {
                    let text = call(payload["params"]["name"].as_str().unwrap_or_default());
                    json!({"content": [{"type": "text", "text": text}], "isError": false})
                }
                _ => continue,
            };
            let reply = json!({"session_id": message["session_id"], "type": "mcp",
                "payload": {"jsonrpc": "2.0", "id": id, "result": result}});
            self.send(reply.to_string()).await?;
        }
    }
}
