//! RAGFlow's retrieval API: `POST {base_url}/api/v1/retrieval` with `Authorization: Bearer
//! <api_key>` and `{question, dataset_ids}`; the answer is `{code, data: {chunks: [{content}]}}`
//! (`code` 0 on success, else `message`).

use serde_json::{Value, json};
use xiaozhi_sdk::ExtensionError;
use xiaozhi_sdk::web::{self, Request, Response};

/// The tool's default description (the operator's `description` replaces it).
pub const DESCRIPTION: &str = "从知识库中查询信息。Look the question up in the knowledge base.";
/// Its arguments.
pub const PARAMETERS: &str = r#"{"type":"object","properties":{"question":{"type":"string","description":"查询的问题"}},"required":["question"]}"#;
/// Chunks given to the LLM.
pub const MAX_CHUNKS: usize = 5;

/// The settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// RAGFlow's address.
    pub base_url: String,
    /// The API key.
    pub api_key: String,
    /// The knowledge bases.
    pub dataset_ids: Vec<String>,
}

impl Settings {
    /// Reads the settings through `get` (the host's `config`); `dataset_ids` is a JSON list (or
    /// comma-separated ids).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Self, ExtensionError> {
        let value = |key: &str| get(key).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let missing = |key: &str| ExtensionError::Denied(format!("no {key} is set in plugins.search_from_ragflow"));
        let base_url = value("base_url").ok_or_else(|| missing("base_url"))?;
        let api_key = value("api_key").ok_or_else(|| missing("api_key"))?;
        let ids = value("dataset_ids").ok_or_else(|| missing("dataset_ids"))?;
        let dataset_ids: Vec<String> = match serde_json::from_str::<Value>(&ids) {
            Ok(Value::Array(items)) => items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect(),
            Ok(Value::String(id)) => vec![id],
            _ => ids.split(',').map(|id| id.trim().to_owned()).filter(|id| !id.is_empty()).collect(),
        };
        if dataset_ids.is_empty() {
            return Err(missing("dataset_ids"));
        }
        Ok(Self { base_url, api_key, dataset_ids })
    }
}

/// The retrieval request.
pub fn request(settings: &Settings, question: &str) -> Request {
    let auth = format!("Bearer {}", settings.api_key);
    web::post_json(
        &web::join(&settings.base_url, "/api/v1/retrieval"),
        &[("Authorization", auth.as_str())],
        &json!({"question": question, "dataset_ids": settings.dataset_ids}),
    )
}

/// The chunks of an answer as text for the LLM (the Python plugin's wording).
pub fn chunks(question: &str, answer: &Value) -> Result<String, ExtensionError> {
    let code = answer["code"].as_i64().unwrap_or(-1);
    if code != 0 {
        let message = answer["message"].as_str().unwrap_or_default();
        return Err(ExtensionError::Failed(format!("RAG接口返回异常（错误码：{code}）：{message}")));
    }
    let chunks: Vec<&str> = answer["data"]["chunks"]
        .as_array()
        .map(|list| list.iter().filter_map(|c| c["content"].as_str()).take(MAX_CHUNKS).collect())
        .unwrap_or_default();
    if chunks.is_empty() {
        return Ok("根据知识库查询结果，没有相关信息。".to_owned());
    }
    Ok(format!("# 关于问题【{question}】查到知识库如下\n{}", chunks.join("\n---\n")))
}

/// Asks the knowledge base with `fetch` (the host's `http.fetch`).
pub fn search(
    settings: &Settings,
    question: &str,
    fetch: impl Fn(&Request) -> Result<Response, ExtensionError>,
) -> Result<String, ExtensionError> {
    let response = fetch(&request(settings, question))?;
    chunks(question, &web::json(&response)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings::read(|key| match key {
            "base_url" => Some("http://rag.local/".into()),
            "api_key" => Some("ragflow-k".into()),
            "dataset_ids" => Some(r#"["d1","d2"]"#.into()),
            _ => None,
        })
        .expect("settings")
    }

    #[test]
    fn the_question_goes_to_the_datasets_and_chunks_come_back() {
        let s = settings();
        let req = request(&s, "退货政策？");
        assert_eq!(req.url, "http://rag.local/api/v1/retrieval");
        assert!(req.headers.iter().any(|(k, v)| k == "Authorization" && v == "Bearer ragflow-k"));
        let body: Value = serde_json::from_slice(req.body.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(body, json!({"question": "退货政策？", "dataset_ids": ["d1", "d2"]}));
        let answer = json!({"code": 0, "data": {"chunks": (0..7).map(|i| json!({"content": format!("c{i}")})).collect::<Vec<_>>()}});
        let text = chunks("退货政策？", &answer).expect("text");
        assert!(text.starts_with("# 关于问题【退货政策？】查到知识库如下\nc0"), "{text}");
        assert!(text.contains("c4") && !text.contains("c5"), "five chunks: {text}");
        assert_eq!(
            chunks("q", &json!({"code": 0, "data": {"chunks": []}})).expect("none"),
            "根据知识库查询结果，没有相关信息。"
        );
        assert!(
            matches!(chunks("q", &json!({"code": 102, "message": "no dataset"})), Err(ExtensionError::Failed(m)) if m.contains("102"))
        );
        assert!(Settings::read(|k| (k == "base_url").then(|| "x".into())).is_err());
    }
}
