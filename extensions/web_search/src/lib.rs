//! The `web_search` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) with one tool,
//! `web_search`, that asks Tavily or Metaso and gives the LLM the results (titles, snippets,
//! links, and Tavily's short answer) to answer from.
//!
//! The requests and the reading of the answers live in [`search`], which takes the fetch
//! function as an argument, so `cargo test` checks them natively with canned answers.

pub mod search;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool};

/// The exported tool.
pub struct WebSearch;

impl Tool for WebSearch {
    const NAME: &'static str = "web_search";
    const DESCRIPTION: &'static str = "联网搜索：当用户问到最新的、实时的或你不确定的事实（新闻、价格、比赛结果、人物近况等）时调用。\
Search the web for current or unfamiliar facts, then answer from the results.";
    const PARAMETERS: &'static str = r#"{"type":"object","properties":{"query":{"type":"string","description":"What to search for, in the user's language, as a short search query."}},"required":["query"]}"#;

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let query = arguments.required("query")?;
        let settings = search::Settings::read(xiaozhi_sdk::host::config::get)?;
        let text = search::run(&settings, query, xiaozhi_sdk::web::send)?;
        Ok(vec![Effect::ReplyToLlm(text)])
    }
}

xiaozhi_sdk::export_tools!(WebSearch);
