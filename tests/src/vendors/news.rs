//! Mocks of the two news sources the news extensions read, each from its published format:
//! - **China News RSS** (中国新闻网 RSS, <https://www.chinanews.com.cn/rss/>): RSS 2.0 feeds at
//!   `/rss/<category>.xml` (`rss/channel/item` with `title`, `link`, `description`, `pubDate`),
//!   and the article pages they link to (HTML whose text is in `<div class="content_desc">`
//!   paragraphs).
//! - **newsnow** (the API of <https://github.com/ourongxing/newsnow>, `GET /api/s?id=<source>`):
//!   `{status: "success", id, updatedTime, items: [{id, title, url, extra}]}`; an unknown source
//!   is `404`.
//!
//! The feed's and the items' links point back at the mock, so the article pages come from it too.

use serde_json::json;

use super::{HttpMock, full_response};

/// Titles of the feed's items and of newsnow's items.
pub const TITLES: [&str; 2] = ["城市公园新增儿童乐园", "新能源公交线路今日开通"];

/// A news server on loopback (China News' feeds and pages, and newsnow's API).
pub struct NewsMock {
    http: HttpMock,
}

impl NewsMock {
    /// Starts it; the articles hold `paragraphs` paragraphs each.
    pub async fn start(paragraphs: usize) -> anyhow::Result<Self> {
        // The links point back at the mock, whose address is known once it listens.
        let base = std::sync::Arc::new(std::sync::OnceLock::<String>::new());
        let seen = std::sync::Arc::clone(&base);
        let http = HttpMock::start(move |request| {
            let base = seen.get().cloned().unwrap_or_default();
            let path = request.head.path().to_owned();
            let target = request.head.target.clone();
            let response = if path == "/rss/society.xml" {
                let items: String = TITLES
                    .iter()
                    .enumerate()
                    .map(|(i, t)| {
                        format!(
                            "<item><title>{t}</title><link>{base}/sh/{i}.shtml</link><description><![CDATA[{t}的摘要。]]></description><pubDate>2026-12-06 09:0{i}:00</pubDate></item>"
                        )
                    })
                    .collect();
                full_response(200, "application/xml", format!("<?xml version=\"1.0\" encoding=\"utf-8\"?><rss version=\"2.0\"><channel><title>中新网社会新闻</title>{items}</channel></rss>"))
            } else if let Some(page) = path.strip_prefix("/sh/") {
                let body: String = (0..paragraphs).map(|i| format!("<p>第{i}段：{page}的详细报道内容，记者现场采访了多位市民。</p>")).collect();
                full_response(200, "text/html; charset=utf-8", format!("<html><body><div class=\"nav\"><p>首页</p></div><div class=\"content_desc\">{body}</div></body></html>"))
            } else if path == "/api/s" {
                match target.split("id=").nth(1) {
                    Some("baidu" | "thepaper" | "cls-depth") => {
                        let items: Vec<_> = TITLES
                            .iter()
                            .enumerate()
                            .map(|(i, t)| json!({"id": i.to_string(), "title": t, "url": format!("{base}/sh/{i}.shtml"), "extra": {}}))
                            .collect();
                        full_response(200, "application/json", json!({"status": "success", "id": "baidu", "updatedTime": 1, "items": items}).to_string())
                    }
                    _ => full_response(404, "application/json", r#"{"error":true,"message":"Invalid source id"}"#),
                }
            } else {
                full_response(404, "text/plain", "not found")
            };
            async move { response }
        })
        .await?;
        let _ = base.set(http.url(""));
        Ok(Self { http })
    }

    /// The society feed's URL.
    pub fn feed_url(&self) -> String {
        self.http.url("/rss/society.xml")
    }

    /// newsnow's API URL, the source id to be appended.
    pub fn newsnow_url(&self) -> String {
        self.http.url("/api/s?id=")
    }
}
