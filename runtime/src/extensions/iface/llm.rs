//! `xiaozhi:extension/llm`: a completion through the server's configured LLM.
//!
//! The answer's text deltas are collected into one string; tool calls are never offered. The
//! length of the answer is bounded by the server's own LLM settings (`max_tokens` of the selected
//! `LLM` entry) and the call's time limit; the guest's `max-tokens` is a hint the host cannot
//! pass through the server's LLM interface and is only used to cut the collected text.

use futures_util::StreamExt;

use super::super::bindings::from_wit_message;
use super::super::bindings::xiaozhi::extension::llm::Host;
use super::super::bindings::xiaozhi::extension::types::{ExtensionError as WitError, Message};
use super::super::host::CallState;
use crate::llm::LlmDelta;

/// Most messages one completion may carry.
pub const MAX_MESSAGES: usize = 64;

impl Host for CallState {
    async fn complete(&mut self, messages: Vec<Message>, max_tokens: Option<u32>) -> Result<String, WitError> {
        if !self.grant.llm {
            return Err(WitError::Denied(format!("llm is not granted to extension {}", self.extension_id)));
        }
        let Some(llm) = self.services.llm.clone() else {
            return Err(WitError::Failed("the server has no LLM configured".into()));
        };
        if messages.is_empty() || messages.len() > MAX_MESSAGES {
            return Err(WitError::InvalidArguments(format!("give 1 to {MAX_MESSAGES} messages")));
        }
        let messages: Vec<_> = messages.into_iter().map(from_wit_message).collect();
        let mut stream = llm.stream(&messages, &[]).await.map_err(|err| WitError::Failed(format!("llm: {err}")))?;
        let mut text = String::new();
        while let Some(delta) = stream.next().await {
            match delta.map_err(|err| WitError::Failed(format!("llm: {err}")))? {
                LlmDelta::Text(piece) => text.push_str(&piece),
                LlmDelta::ToolCalls(_) => {}
            }
        }
        Ok(cut_to_tokens(text, max_tokens))
    }
}

/// Cuts `text` to roughly `max_tokens` tokens, counting a token as four bytes of text (the usual
/// estimate); `None` keeps everything.
fn cut_to_tokens(text: String, max_tokens: Option<u32>) -> String {
    let Some(max_tokens) = max_tokens else { return text };
    let limit = usize::try_from(max_tokens).unwrap_or(usize::MAX).saturating_mul(4);
    if text.len() <= limit {
        return text;
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_cuts_on_a_char_boundary() {
        assert_eq!(cut_to_tokens("hello world".into(), None), "hello world");
        assert_eq!(cut_to_tokens("hello world".into(), Some(1)), "hell");
        assert_eq!(cut_to_tokens("你好世界".into(), Some(1)), "你");
        assert_eq!(cut_to_tokens("short".into(), Some(100)), "short");
    }
}
