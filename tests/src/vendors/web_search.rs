//! Mocks of two web search APIs, each from its vendor's API documentation:
//! - **Tavily** (<https://docs.tavily.com/documentation/api-reference/endpoint/search>):
//!   `POST /search` with `Authorization: Bearer tvly-…` and `{query, max_results, search_depth,
//!   include_answer, ...}`; the answer is `{query, answer, results: [{title, url, content,
//!   score}], response_time}`; a bad key is `401 {detail: {error}}`.
//! - **Metaso** (秘塔 search API, <https://metaso.cn/search-api/playground>): `POST
//!   /api/v1/search` with `Authorization: Bearer mk-…` and `{q, scope, size, includeSummary}`;
//!   the answer is `{credits, searchParameters, webpages: [{title, link, snippet, date,
//!   position}], total}`; a bad key is `401`.
//!
//! Both answer every query with the same two pages, naming the query in the first.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

use super::{HttpMock, full_response};

/// A search API on loopback (Tavily's or Metaso's shape).
pub struct SearchMock {
    http: HttpMock,
    requests: Arc<Mutex<Vec<Value>>>,
}

impl SearchMock {
    /// Tavily, accepting `api_key`.
    pub async fn tavily(api_key: &str) -> anyhow::Result<Self> {
        Self::start(api_key, "/search", |query, size| {
            let results: Vec<Value> = pages(query)
                .into_iter()
                .take(size)
                .map(|(title, url, text)| json!({"title": title, "url": url, "content": text, "score": 0.9}))
                .collect();
            json!({"query": query, "answer": format!("The answer about {query}."), "results": results, "response_time": 0.4})
        })
        .await
    }

    /// Metaso, accepting `api_key`.
    pub async fn metaso(api_key: &str) -> anyhow::Result<Self> {
        Self::start(api_key, "/api/v1/search", |query, size| {
            let pages: Vec<Value> = pages(query)
                .into_iter()
                .take(size)
                .enumerate()
                .map(|(i, (title, url, text))| {
                    json!({"title": title, "link": url, "snippet": text, "date": "2026年12月01日", "position": i + 1})
                })
                .collect();
            json!({"credits": 3, "searchParameters": {"q": query}, "total": pages.len(), "webpages": pages})
        })
        .await
    }

    async fn start(api_key: &str, path: &'static str, answer: fn(&str, usize) -> Value) -> anyhow::Result<Self> {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (auth, log) = (format!("Bearer {api_key}"), Arc::clone(&requests));
        let http = HttpMock::start(move |request| {
            let body = request.json();
            if let Ok(mut log) = log.lock() {
                log.push(body.clone());
            }
            let response = if request.head.path() != path || request.head.method != "POST" {
                full_response(404, "application/json", r#"{"detail":"Not Found"}"#)
            } else if request.head.header("authorization") != Some(auth.as_str()) {
                full_response(
                    401,
                    "application/json",
                    r#"{"detail":{"error":"Unauthorized: missing or invalid API key."}}"#,
                )
            } else {
                let query = body["query"].as_str().or(body["q"].as_str()).unwrap_or_default();
                let size = body["max_results"].as_u64().or(body["size"].as_u64()).unwrap_or(5) as usize;
                full_response(200, "application/json", answer(query, size).to_string())
            };
            async move { response }
        })
        .await?;
        Ok(Self { http, requests })
    }

    /// The `api_url` setting.
    pub fn base_url(&self) -> String {
        self.http.url("")
    }

    /// The request bodies received.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn pages(query: &str) -> Vec<(String, String, String)> {
    vec![
        (format!("{query} — overview"), "https://example.org/a".into(), format!("Everything about {query}, in short.")),
        ("A second page".into(), "https://example.org/b".into(), "More details.".into()),
    ]
}
