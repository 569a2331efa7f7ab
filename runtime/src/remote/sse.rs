//! Server-sent events (the `text/event-stream` answers of streamed chat and speech APIs), split
//! into events as the bytes arrive.

/// Longest SSE line (or unfinished event) accepted before the answer is declared malformed.
pub(crate) const MAX_SSE_LINE: usize = 1 << 20;

/// One event: its `event:` name (empty when it has none) and its `data:` payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// The `event:` field, empty when the event has none.
    pub(crate) event: String,
    /// The `data:` lines, joined with `\n`.
    pub(crate) data: String,
}

/// Splits an SSE byte stream into events. Lines may end in `\n` or `\r\n` and may be split
/// anywhere across chunks; comments (`:`) and fields other than `event` and `data` are skipped.
/// A payload is handed out as soon as it is `[DONE]` or complete JSON (some providers leave out
/// the blank line between events); otherwise `data:` lines are joined until a blank line.
#[derive(Debug, Default)]
pub(crate) struct SseLines {
    buf: Vec<u8>,
    pending: String,
    event: String,
}

impl SseLines {
    /// Feeds bytes; complete events are appended to `out`. Errs when a line grows absurdly long.
    pub(crate) fn push(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), String> {
        self.buf.extend_from_slice(chunk);
        let buf = std::mem::take(&mut self.buf);
        let mut start = 0;
        while let Some(pos) = buf.get(start..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
            let end = start + pos;
            self.line(buf.get(start..end).unwrap_or_default(), out);
            start = end + 1;
        }
        self.buf = buf.get(start..).unwrap_or_default().to_vec();
        if self.buf.len() > MAX_SSE_LINE || self.pending.len() > MAX_SSE_LINE {
            return Err(format!("an SSE line is longer than {MAX_SSE_LINE} bytes"));
        }
        Ok(())
    }

    /// The body ended: a last line without its newline, and an event without its blank line,
    /// still count.
    pub(crate) fn finish(&mut self, out: &mut Vec<SseEvent>) {
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            self.line(&rest, out);
        }
        if !self.pending.is_empty() {
            self.emit(out);
        }
    }

    fn emit(&mut self, out: &mut Vec<SseEvent>) {
        out.push(SseEvent { event: std::mem::take(&mut self.event), data: std::mem::take(&mut self.pending) });
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            if self.pending.is_empty() {
                self.event.clear();
            } else {
                self.emit(out);
            }
            return;
        }
        if line.starts_with(b":") {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => (line.get(..colon).unwrap_or_default(), line.get(colon + 1..).unwrap_or_default()),
            None => (line, &[][..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if field == b"event" {
            self.event = String::from_utf8_lossy(value).chars().take(256).collect();
            return;
        }
        if field != b"data" {
            return;
        }
        let value = String::from_utf8_lossy(value);
        if self.pending.is_empty() {
            if is_complete_payload(&value) {
                self.pending = value.into_owned();
                self.emit(out);
                return;
            }
        } else {
            self.pending.push('\n');
        }
        self.pending.push_str(&value);
        if is_complete_payload(&self.pending) {
            self.emit(out);
        }
    }
}

fn is_complete_payload(payload: &str) -> bool {
    payload.trim() == "[DONE]" || serde_json::from_str::<serde::de::IgnoredAny>(payload).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut lines = SseLines::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.push(chunk, &mut out).expect("short lines");
        }
        lines.finish(&mut out);
        out
    }

    fn event(name: &str, data: &str) -> SseEvent {
        SseEvent { event: name.into(), data: data.into() }
    }

    #[test]
    fn events_keep_their_names_across_any_split() {
        let body = b"event: conversation.message.delta\r\ndata: {\"a\":1}\r\n\r\n: keep-alive\n\ndata: {\"b\":\ndata:2}\n\nevent:done\ndata: [DONE]\n";
        let whole = events(&[body]);
        assert_eq!(
            whole,
            vec![event("conversation.message.delta", "{\"a\":1}"), event("", "{\"b\":\n2}"), event("done", "[DONE]")]
        );
        for cut in 1..body.len() {
            assert_eq!(events(&[&body[..cut], &body[cut..]]), whole, "split at {cut}");
        }
    }

    #[test]
    fn an_event_name_without_data_does_not_stick_to_the_next_event() {
        assert_eq!(events(&[b"event: ping\n\ndata: {}\n\n"]), vec![event("", "{}")]);
    }

    #[test]
    fn an_endless_line_is_refused() {
        let mut lines = SseLines::default();
        let mut out = Vec::new();
        assert!(lines.push(&vec![b'x'; MAX_SSE_LINE + 1], &mut out).is_err());
    }
}
