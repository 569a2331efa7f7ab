//! The `search_from_ragflow` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) with the Python server's
//! `search_from_ragflow` tool: it asks a RAGFlow knowledge base and gives the LLM the first five
//! chunks it finds.
//!
//! The request and the reading of the answer live in [`ragflow`], which takes the fetch function
//! as an argument, so `cargo test` checks them natively with canned answers.

pub mod ragflow;

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool, ToolDefinition};

/// The exported tool.
pub struct SearchFromRagflow;

impl Tool for SearchFromRagflow {
    const NAME: &'static str = "search_from_ragflow";

    fn definition() -> ToolDefinition {
        let description = xiaozhi_sdk::host::config::get("description")
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| ragflow::DESCRIPTION.to_owned());
        ToolDefinition { name: Self::NAME.into(), description, parameters_json: ragflow::PARAMETERS.into() }
    }

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let question = arguments.str("question").or_else(|| arguments.str("query"));
        let question = question.ok_or_else(|| ExtensionError::InvalidArguments("question is missing".into()))?;
        let settings = ragflow::Settings::read(xiaozhi_sdk::host::config::get)?;
        let text = ragflow::search(&settings, question, xiaozhi_sdk::web::send)?;
        Ok(vec![Effect::ReplyToLlm(text)])
    }
}

xiaozhi_sdk::export_tools!(SearchFromRagflow);
