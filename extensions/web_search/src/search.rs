//! Tavily and Metaso: the request each API takes and the results it answers, as text for the LLM.

use serde_json::{Value, json};
use xiaozhi_sdk::ExtensionError;
use xiaozhi_sdk::web::{self, Request, Response};

/// Longest snippet kept per result, in characters.
pub const SNIPPET_CHARS: usize = 400;

/// Which search API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Tavily (`POST {base}/search`, `Authorization: Bearer`).
    Tavily,
    /// Metaso (`POST {base}/api/v1/search`, `Authorization: Bearer`).
    Metaso,
}

/// The operator's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The API.
    pub provider: Provider,
    /// Its key.
    pub api_key: String,
    /// Results given to the LLM (1 to 10).
    pub max_results: usize,
    /// The API's base URL.
    pub base_url: String,
}

impl Settings {
    /// Reads the settings through `get` (the host's `config`).
    pub fn read(get: impl Fn(&str) -> Option<String>) -> Result<Self, ExtensionError> {
        let provider = match get("provider").as_deref().map(str::trim).map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("tavily") => Provider::Tavily,
            Some("metaso") => Provider::Metaso,
            Some(other) => {
                return Err(ExtensionError::Failed(format!("provider {other:?} is unknown; use tavily or metaso")));
            }
        };
        let api_key = get("api_key").map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).ok_or_else(|| {
            ExtensionError::Denied(
                "no api_key is set in extensions.grants.web_search.config (or plugins.web_search)".into(),
            )
        })?;
        let max_results = get("max_results").and_then(|n| n.trim().parse().ok()).unwrap_or(5usize).clamp(1, 10);
        let base_url = get("api_url").map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).unwrap_or_else(|| {
            match provider {
                Provider::Tavily => "https://api.tavily.com",
                Provider::Metaso => "https://metaso.cn",
            }
            .to_owned()
        });
        Ok(Self { provider, api_key, max_results, base_url })
    }
}

/// The search request for `query`.
pub fn request(settings: &Settings, query: &str) -> Request {
    let auth = format!("Bearer {}", settings.api_key);
    let headers = [("Authorization", auth.as_str())];
    match settings.provider {
        Provider::Tavily => web::post_json(
            &web::join(&settings.base_url, "/search"),
            &headers,
            &json!({"query": query, "max_results": settings.max_results, "search_depth": "basic", "include_answer": true}),
        ),
        Provider::Metaso => web::post_json(
            &web::join(&settings.base_url, "/api/v1/search"),
            &headers,
            &json!({"q": query, "scope": "webpage", "size": settings.max_results, "includeSummary": false}),
        ),
    }
}

fn clip(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > SNIPPET_CHARS {
        format!("{}…", text.chars().take(SNIPPET_CHARS).collect::<String>())
    } else {
        text
    }
}

/// The results of an answer as text for the LLM.
pub fn results(settings: &Settings, query: &str, answer: &Value) -> Result<String, ExtensionError> {
    let field = |item: &Value, keys: &[&str]| {
        keys.iter().find_map(|k| item[*k].as_str()).map(str::to_owned).unwrap_or_default()
    };
    let (list, title, snippet, link) = match settings.provider {
        Provider::Tavily => (&answer["results"], ["title"], ["content"], ["url"]),
        Provider::Metaso => (&answer["webpages"], ["title"], ["snippet"], ["link"]),
    };
    let Some(list) = list.as_array() else {
        return Err(ExtensionError::Failed("the search answer has no result list".into()));
    };
    let mut text = format!("Web search results for \"{query}\":\n");
    if let Some(short) = answer["answer"].as_str().filter(|a| !a.trim().is_empty()) {
        text.push_str(&format!("Short answer: {}\n", clip(short)));
    }
    let mut shown = 0;
    for item in list.iter().take(settings.max_results) {
        let (title, snippet, link) = (field(item, &title), field(item, &snippet), field(item, &link));
        if title.is_empty() && snippet.is_empty() {
            continue;
        }
        shown += 1;
        text.push_str(&format!("{shown}. {} — {} ({link})\n", clip(&title), clip(&snippet)));
    }
    if shown == 0 {
        text.push_str("Nothing was found.\n");
    }
    text.push_str("Answer the user briefly from these results, in their language.");
    Ok(text)
}

/// Searches for `query` with `fetch` (the host's `http.fetch`) and returns the text for the LLM.
pub fn run(
    settings: &Settings,
    query: &str,
    fetch: impl Fn(&Request) -> Result<Response, ExtensionError>,
) -> Result<String, ExtensionError> {
    let response = fetch(&request(settings, query))?;
    results(settings, query, &web::json(&response)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(provider: &str) -> Settings {
        Settings::read(|key| match key {
            "provider" => Some(provider.to_owned()),
            "api_key" => Some("k-1".to_owned()),
            "max_results" => Some("2".to_owned()),
            _ => None,
        })
        .expect("settings")
    }

    #[test]
    fn tavily_is_asked_with_the_key_and_its_results_become_text() {
        let s = settings("tavily");
        let req = request(&s, "xiaozhi");
        assert_eq!(req.url, "https://api.tavily.com/search");
        assert!(req.headers.iter().any(|(k, v)| k == "Authorization" && v == "Bearer k-1"));
        let body: Value = serde_json::from_slice(req.body.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(body["query"], "xiaozhi");
        assert_eq!(body["max_results"], 2);
        let answer = json!({"answer": "An ESP32 assistant.", "results": [
            {"title": "Xiaozhi", "url": "https://a", "content": "An open   voice assistant."},
            {"title": "B", "url": "https://b", "content": "b"},
            {"title": "C", "url": "https://c", "content": "c"}]});
        let text = results(&s, "xiaozhi", &answer).expect("text");
        assert!(text.contains("Short answer: An ESP32 assistant."), "{text}");
        assert!(text.contains("1. Xiaozhi — An open voice assistant. (https://a)"), "{text}");
        assert!(!text.contains("https://c"), "max_results is kept: {text}");
    }

    #[test]
    fn metaso_is_asked_its_way_and_errors_are_clear() {
        let s = settings("metaso");
        let req = request(&s, "小智");
        assert_eq!(req.url, "https://metaso.cn/api/v1/search");
        let body: Value = serde_json::from_slice(req.body.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(body["q"], "小智");
        assert_eq!(body["scope"], "webpage");
        let text =
            results(&s, "小智", &json!({"webpages": [{"title": "小智", "link": "https://x", "snippet": "开源"}]}))
                .expect("text");
        assert!(text.contains("1. 小智 — 开源 (https://x)"), "{text}");
        let failed = run(&s, "q", |_| Ok(Response { status: 401, headers: vec![], body: b"bad key".to_vec() }));
        assert!(matches!(failed, Err(ExtensionError::Failed(m)) if m.contains("401")));
        assert!(matches!(Settings::read(|_| None), Err(ExtensionError::Denied(_))));
        assert!(Settings::read(|k| (k == "provider").then(|| "bing".into())).is_err());
    }
}
