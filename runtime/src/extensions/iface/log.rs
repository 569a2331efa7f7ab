//! `xiaozhi:extension/log` and the guest's stdout/stderr: both go to `tracing`, tagged with
//! `extension = <id>` and the device of the call, and rate-limited per call.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use tracing::Level as TLevel;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::super::bindings::xiaozhi::extension::log::{Host, Level};
use super::super::host::CallState;

/// Most log records (host `log` calls plus stdout/stderr lines) one call may write; later ones
/// are dropped and counted.
pub const MAX_RECORDS_PER_CALL: u32 = 200;
/// Longest message or output line kept, bytes (longer ones are cut).
pub const MAX_LINE_BYTES: usize = 2048;

/// The per-call log budget shared by the `log` interface and the stdio pipes.
#[derive(Debug, Default)]
pub(crate) struct LogBudget {
    written: u32,
    dropped: u32,
}

impl LogBudget {
    /// Takes one record from the budget; `false` when it is spent.
    fn take(&mut self) -> bool {
        if self.written < MAX_RECORDS_PER_CALL {
            self.written += 1;
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }
}

/// Identity of the call that log records are tagged with.
#[derive(Debug, Clone)]
pub(crate) struct LogTags {
    /// The extension id.
    pub extension: Arc<str>,
    /// The device of the call.
    pub device: Arc<str>,
    /// The shared record budget.
    pub budget: Arc<Mutex<LogBudget>>,
}

impl LogTags {
    /// Reports records dropped by the budget, once, at the end of a call.
    pub fn report_dropped(&self) {
        let dropped = self.budget.lock().unwrap_or_else(PoisonError::into_inner).dropped;
        if dropped > 0 {
            tracing::warn!(extension = %self.extension, device = %self.device, dropped, "extension log records dropped (limit {MAX_RECORDS_PER_CALL} per call)");
        }
    }

    fn take(&self) -> bool {
        self.budget.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

/// Cuts `text` to at most [`MAX_LINE_BYTES`] on a character boundary.
fn clip(text: &str) -> &str {
    if text.len() <= MAX_LINE_BYTES {
        return text;
    }
    let mut end = MAX_LINE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn tracing_level(level: Level) -> TLevel {
    match level {
        Level::Trace => TLevel::TRACE,
        Level::Debug => TLevel::DEBUG,
        Level::Info => TLevel::INFO,
        Level::Warn => TLevel::WARN,
        Level::Error => TLevel::ERROR,
    }
}

/// Emits one record at a runtime level (the `tracing` macros need a constant level).
macro_rules! emit {
    ($level:expr, $($rest:tt)*) => {
        match $level {
            TLevel::TRACE => tracing::trace!($($rest)*),
            TLevel::DEBUG => tracing::debug!($($rest)*),
            TLevel::INFO => tracing::info!($($rest)*),
            TLevel::WARN => tracing::warn!($($rest)*),
            _ => tracing::error!($($rest)*),
        }
    };
}

fn level_enabled(level: TLevel) -> bool {
    match level {
        TLevel::TRACE => tracing::enabled!(TLevel::TRACE),
        TLevel::DEBUG => tracing::enabled!(TLevel::DEBUG),
        TLevel::INFO => tracing::enabled!(TLevel::INFO),
        TLevel::WARN => tracing::enabled!(TLevel::WARN),
        _ => tracing::enabled!(TLevel::ERROR),
    }
}

impl Host for CallState {
    async fn log(&mut self, level: Level, message: String, fields: Vec<(String, String)>) {
        let level = tracing_level(level);
        if !level_enabled(level) || !self.log.take() {
            return;
        }
        let fields: Vec<String> = fields.iter().map(|(key, value)| format!("{}={}", clip(key), clip(value))).collect();
        let fields = fields.join(" ");
        emit!(level, extension = %self.log.extension, device = %self.log.device, fields = %clip(&fields), "{}", clip(&message));
    }

    async fn enabled(&mut self, level: Level) -> bool {
        level_enabled(tracing_level(level))
    }
}

/// A guest's stdout or stderr: complete lines become log records (`info` for stdout, `warn`
/// for stderr). Writes never fail, so a guest that prints cannot trap because of it; output over
/// the budget is dropped.
#[derive(Clone)]
pub(crate) struct LogPipe {
    tags: LogTags,
    stream: &'static str,
    line: Arc<Mutex<Vec<u8>>>,
}

impl LogPipe {
    /// A pipe for the stream called `stream` (`stdout` or `stderr`).
    pub fn new(tags: LogTags, stream: &'static str) -> Self {
        Self { tags, stream, line: Arc::default() }
    }

    fn emit_line(&self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        if text.is_empty() || !self.tags.take() {
            return;
        }
        let level = if self.stream == "stderr" { TLevel::WARN } else { TLevel::INFO };
        emit!(level, extension = %self.tags.extension, device = %self.tags.device, stream = self.stream, "{}", clip(text));
    }

    fn push(&self, bytes: &[u8]) {
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        for chunk in bytes.split_inclusive(|b| *b == b'\n') {
            let (text, complete) = match chunk.strip_suffix(b"\n") {
                Some(text) => (text, true),
                None => (chunk, false),
            };
            let room = MAX_LINE_BYTES.saturating_sub(line.len());
            line.extend_from_slice(text.get(..text.len().min(room)).unwrap_or_default());
            if complete {
                self.emit_line(&line);
                line.clear();
            }
        }
    }

    /// Writes out a last line without a newline (at the end of the call).
    pub fn flush_line(&self) {
        let mut line = self.line.lock().unwrap_or_else(PoisonError::into_inner);
        if !line.is_empty() {
            let rest = std::mem::take(&mut *line);
            drop(line);
            self.emit_line(&rest);
        }
    }
}

impl IsTerminal for LogPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[async_trait::async_trait]
impl Pollable for LogPipe {
    async fn ready(&mut self) {}
}

#[async_trait::async_trait]
impl OutputStream for LogPipe {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LogPipe {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags() -> LogTags {
        LogTags { extension: "ext".into(), device: "dev".into(), budget: Arc::default() }
    }

    #[test]
    fn lines_are_split_buffered_and_budgeted() {
        let tags = tags();
        let pipe = LogPipe::new(tags.clone(), "stdout");
        pipe.push(b"one\ntw");
        assert_eq!(tags.budget.lock().expect("lock").written, 1);
        pipe.push(b"o\n");
        assert_eq!(tags.budget.lock().expect("lock").written, 2);
        pipe.push(b"tail");
        pipe.flush_line();
        assert_eq!(tags.budget.lock().expect("lock").written, 3);
        for _ in 0..MAX_RECORDS_PER_CALL {
            pipe.push(b"x\n");
        }
        let budget = tags.budget.lock().expect("lock");
        assert_eq!((budget.written, budget.dropped), (MAX_RECORDS_PER_CALL, 3));
    }

    #[test]
    fn clip_respects_char_boundaries() {
        let long = "字".repeat(MAX_LINE_BYTES);
        let clipped = clip(&long);
        assert!(clipped.len() <= MAX_LINE_BYTES && clipped.len() > MAX_LINE_BYTES - 3);
        assert_eq!(clip("short"), "short");
    }
}
