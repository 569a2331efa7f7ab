//! The `mem_local_short` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/memory-extension@0.2.0`, written with the guest SDK) providing the Python
//! server's short-term memory. `save` asks the host's LLM to merge the finished dialogue into the previous memory
//! as JSON of at most 2000 characters and stores it with the host's `kv` (key `memory`, which
//! the host namespaces per extension and device); `query` returns the stored memory for the
//! system prompt.
//!
//! The logic lives in [`memory`]; everything compiles natively, so `cargo test` runs the unit
//! tests on the build machine.

pub mod memory;

use xiaozhi_sdk::host::{config, kv, llm, log};
use xiaozhi_sdk::{ExtensionError, Memory, Message, Role};

/// Converts an SDK message into the plain module's message.
fn plain(message: &Message) -> memory::Message {
    let role = match message.role {
        Role::System => memory::Role::System,
        Role::User => memory::Role::User,
        Role::Assistant => memory::Role::Assistant,
        Role::Tool => memory::Role::Tool,
    };
    memory::Message { role, content: message.content.clone() }
}

/// The exported memory.
pub struct MemLocalShort;

impl Memory for MemLocalShort {
    fn query(_device_id: &str, _text: &str) -> Result<String, ExtensionError> {
        let stored = kv::get(memory::KV_KEY)?;
        Ok(memory::stored_text(stored.as_deref()))
    }

    fn save(_device_id: &str, messages: &[Message]) -> Result<(), ExtensionError> {
        let messages: Vec<memory::Message> = messages.iter().map(plain).collect();
        if !memory::worth_saving(&messages) {
            return Ok(());
        }
        let previous = kv::get(memory::KV_KEY)?.map(|bytes| memory::stored_text(Some(&bytes)));
        let offset = memory::parse_offset(config::get(memory::OFFSET_CONFIG_KEY).as_deref());
        // std's SystemTime reads `wasi:clocks/wall-clock` on wasm32-wasip2.
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|since| i64::try_from(since.as_secs()).ok())
            .unwrap_or(0);
        let prompt = memory::user_prompt(&messages, previous.as_deref(), &memory::format_time(seconds, offset));
        let request = [
            Message { role: Role::System, content: memory::SYSTEM_PROMPT.to_owned() },
            Message { role: Role::User, content: prompt },
        ];
        let reply = llm::complete(&request, Some(memory::MAX_TOKENS))?;
        // As in the Python server, an unusable summary keeps the previous memory.
        let text = memory::memory_from_reply(&reply).map_err(|error| {
            ExtensionError::Failed(match error {
                memory::SummaryError::NotJson => "the LLM's summary is not a JSON object".to_owned(),
                memory::SummaryError::TooLong => "the LLM's summary cannot be capped".to_owned(),
            })
        })?;
        kv::set(memory::KV_KEY, text.as_bytes())?;
        log::log(
            log::Level::Info,
            "memory saved",
            &[("chars".into(), text.chars().count().to_string()), ("messages".into(), messages.len().to_string())],
        );
        Ok(())
    }
}

xiaozhi_sdk::export_memory!(MemLocalShort);
