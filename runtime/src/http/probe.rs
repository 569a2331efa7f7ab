//! `xiaozhi-server health`: asks a running server's `GET /health` over loopback and succeeds only
//! on a 200. The container image uses it as its `HEALTHCHECK`, so the image needs no curl.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Most bytes of the answer read; `/health` answers with a few dozen.
const MAX_ANSWER: u64 = 16 * 1024;

/// Sends `GET /health` to `addr` and returns the body of a 200 answer; any other status, a
/// refused connection or no complete answer within `timeout` is an error naming what happened.
pub async fn health(addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    tokio::time::timeout(timeout, ask(addr))
        .await
        .with_context(|| format!("no answer from http://{addr}/health within {} ms", timeout.as_millis()))?
}

async fn ask(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("cannot connect to {addr}"))?;
    let request = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.context("cannot send the request")?;
    let mut answer = Vec::new();
    (&mut stream).take(MAX_ANSWER).read_to_end(&mut answer).await.context("cannot read the answer")?;
    let text = String::from_utf8_lossy(&answer);
    let status_line = text.lines().next().unwrap_or_default();
    let status = status_line.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        if status_line.is_empty() {
            bail!("http://{addr}/health closed the connection without an answer");
        }
        bail!("http://{addr}/health answered `{status_line}`");
    }
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.trim().to_string()).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot peer that reads the request and writes `answer`.
    async fn peer(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            socket.write_all(answer.as_bytes()).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn a_200_answer_passes_with_its_body() {
        let addr = peer("HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}").await;
        assert_eq!(health(addr, Duration::from_secs(5)).await.unwrap(), "{\"status\":\"ok\"}");
    }

    #[tokio::test]
    async fn other_statuses_and_silence_fail() {
        let addr = peer("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let err = health(addr, Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(err.contains("503"), "{err}");

        let addr = peer("").await;
        let err = health(addr, Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(err.contains("without an answer"), "{err}");

        // A port nobody listens on.
        let free = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let err = health(free, Duration::from_secs(5)).await.unwrap_err().to_string();
        assert!(err.contains("cannot connect"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _hold = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            std::future::pending::<()>().await
        });
        let err = health(addr, Duration::from_millis(200)).await.unwrap_err().to_string();
        assert!(err.contains("no answer"), "{err}");
    }
}
