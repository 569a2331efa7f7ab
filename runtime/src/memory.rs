//! Conversation memory through a memory extension, chosen by the selected `Memory` entry's
//! `type` ([`MemoryMode::Extension`], for example the built-in `mem_local_short`).
//!
//! On every turn the extension is asked what it knows for the device ([`recall`]); the answer
//! goes into the system prompt between `<memory>` tags ([`with_memory`]), as in the Python
//! server. When the connection ends, the dialogue is handed to the extension ([`remember`]), so the device's next connection starts with it. Memory is keyed by the device
//! id of the connection (the extension's `kv` namespace is per device), so two devices' memories
//! never mix. A failing or missing extension never fails the turn: it is logged and the turn
//! goes on without memory.

use crate::config::MemoryMode;
use crate::extensions::{ExtensionScope, Kind, warn_not_serving};
use crate::llm::{ChatMessage, Role};

/// Longest memory text put into the system prompt, in characters (longer answers are cut).
pub const MAX_MEMORY_CHARS: usize = 4000;

/// What the memory extension of `mode` knows that is relevant to `text`, or `None` (no memory
/// configured, nothing known, or the extension failed).
pub async fn recall(scope: &ExtensionScope, mode: &MemoryMode, text: &str) -> Option<String> {
    let MemoryMode::Extension(id) = mode else { return None };
    let Some(ext) = scope.find(id, Kind::Memory) else {
        warn_not_serving("Memory", id, "nothing is remembered");
        return None;
    };
    match scope.host.memory_query(ext, text, scope.context.clone()).await {
        Ok(memory) if memory.trim().is_empty() => None,
        Ok(memory) => Some(memory.trim().chars().take(MAX_MEMORY_CHARS).collect()),
        Err(err) => {
            tracing::warn!("memory query failed, answering without memory: {err}");
            None
        }
    }
}

/// Hands the finished `dialogue` to the memory extension of `mode` and waits for it (the
/// session calls this after its connection is gone; server shutdown waits for it). Does nothing
/// without a memory extension or without a user message; a failure is logged.
pub async fn remember(scope: ExtensionScope, mode: &MemoryMode, dialogue: Vec<ChatMessage>) {
    let MemoryMode::Extension(id) = mode else { return };
    if !dialogue.iter().any(|m| m.role == Role::User) {
        return;
    }
    let Some(ext) = scope.find(id, Kind::Memory) else {
        warn_not_serving("Memory", id, "nothing is remembered");
        return;
    };
    match scope.host.memory_save(ext, &dialogue, scope.context.clone()).await {
        Ok(()) => tracing::debug!(extension = %id, "dialogue of {} messages saved to memory", dialogue.len()),
        Err(err) => tracing::warn!(extension = %id, "saving the dialogue to memory failed: {err}"),
    }
}

/// `prompt` with `memory` between `<memory>` tags: replacing the content of a `<memory>…</memory>`
/// section when the prompt has one (the Python server's prompt templates do), else appended.
pub fn with_memory(prompt: &str, memory: &str) -> String {
    let section = format!("<memory>\n{memory}\n</memory>");
    if let Some(start) = prompt.find("<memory>")
        && let Some(len) = prompt[start..].find("</memory>")
    {
        let end = start + len + "</memory>".len();
        return format!("{}{section}{}", &prompt[..start], &prompt[end..]);
    }
    format!("{}\n\n{section}", prompt.trim_end())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_fills_the_tag_or_is_appended() {
        assert_eq!(
            with_memory("You are Xiaozhi.\n<memory>\nold\n</memory>\nBe brief.", "likes tea"),
            "You are Xiaozhi.\n<memory>\nlikes tea\n</memory>\nBe brief."
        );
        assert_eq!(
            with_memory("You are Xiaozhi.\n", "likes tea"),
            "You are Xiaozhi.\n\n<memory>\nlikes tea\n</memory>"
        );
        // An unclosed tag is left alone.
        assert_eq!(with_memory("a <memory> b", "m"), "a <memory> b\n\n<memory>\nm\n</memory>");
    }
}
