//! The RAGFlow mock: RAGFlow's retrieval API as its HTTP API reference describes it
//! (<https://ragflow.io/docs/dev/http_api_reference#retrieve-chunks>): `POST /api/v1/retrieval`
//! with `Authorization: Bearer <api_key>` and `{question, dataset_ids, ...}`; the answer is
//! `{code: 0, data: {chunks: [{content, document_keyword, similarity, ...}], total}}`, and an
//! error is `{code: <non-zero>, message}` (a wrong key: `code: 109`, "Authentication error: API
//! key is invalid!"; an unknown dataset: `code: 102`). Chunks are found by the question's words.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{HttpMock, full_response};

/// A RAGFlow server on loopback with one dataset of text chunks.
pub struct RagflowMock {
    http: HttpMock,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl RagflowMock {
    /// Starts it: `api_key`, the dataset `dataset_id` holding `chunks`.
    pub async fn start(api_key: &str, dataset_id: &str, chunks: &[&str]) -> anyhow::Result<Self> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (auth, dataset, chunks, log) = (
            format!("Bearer {api_key}"),
            dataset_id.to_owned(),
            chunks.iter().map(|c| (*c).to_owned()).collect::<Vec<_>>(),
            Arc::clone(&requests),
        );
        let http = HttpMock::start(move |request| {
            let json_answer = |body: Value| full_response(200, "application/json", body.to_string());
            let body = request.json();
            if let Ok(mut log) = log.lock() {
                log.push(body.clone());
            }
            let answer = if request.head.path() != "/api/v1/retrieval" || request.head.method != "POST" {
                full_response(404, "text/plain", "not found")
            } else if request.head.header("authorization") != Some(auth.as_str()) {
                json_answer(json!({"code": 109, "message": "Authentication error: API key is invalid!"}))
            } else if !body["dataset_ids"].as_array().is_some_and(|ids| ids.iter().any(|id| id == dataset.as_str())) {
                json_answer(json!({"code": 102, "message": "You don't own the dataset."}))
            } else {
                let question = body["question"].as_str().unwrap_or_default().to_lowercase();
                let words: Vec<&str> = question.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 2).collect();
                let found: Vec<Value> = chunks
                    .iter()
                    .filter(|c| words.iter().any(|w| c.to_lowercase().contains(w)))
                    .map(|c| json!({"content": c, "document_keyword": "faq.md", "similarity": 0.8}))
                    .collect();
                json_answer(json!({"code": 0, "data": {"total": found.len(), "chunks": found}}))
            };
            async move { answer }
        })
        .await?;
        Ok(Self { http, requests })
    }

    /// The `base_url` setting.
    pub fn base_url(&self) -> String {
        self.http.url("")
    }

    /// The request bodies received.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}
