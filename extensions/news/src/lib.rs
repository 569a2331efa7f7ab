//! What the two news extensions (`get_news_from_chinanews`, `get_news_from_newsnow`) share:
//! reading an RSS feed (`roxmltree`) or a newsnow answer into [`Item`]s, picking one, the text of
//! an article page (`scraper`), the last item told to a device (kept in its `kv`, so that "tell me
//! more" finds it), the texts for the LLM in the Python plugins' words, and the summary of a long
//! article through the host's LLM.

use serde_json::Value;
use xiaozhi_sdk::ExtensionError;

/// Longest article text kept (the Python plugins' cap), in characters.
pub const ARTICLE_CHARS: usize = 2000;
/// Article text longer than this is summarised through the host's LLM before it goes to the
/// chat LLM.
pub const SUMMARY_OVER_CHARS: usize = 1200;
/// The `kv` key of the last item told to the device.
pub const LAST_KEY: &str = "last_news";

/// One news item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Its title.
    pub title: String,
    /// The article's address.
    pub link: String,
    /// The feed's summary (may be empty).
    pub description: String,
    /// When it was published, as the feed writes it (may be empty).
    pub published: String,
}

/// The items of an RSS 2.0 feed (`channel/item` with `title`, `link`, `description`, `pubDate`).
pub fn parse_rss(xml: &str) -> Result<Vec<Item>, ExtensionError> {
    let document =
        roxmltree::Document::parse(xml).map_err(|err| ExtensionError::Failed(format!("the feed is not XML: {err}")))?;
    let text = |item: roxmltree::Node, name: &str| {
        item.children()
            .find(|c| c.has_tag_name(name))
            .and_then(|c| c.text())
            .map(|t| t.trim().to_owned())
            .unwrap_or_default()
    };
    Ok(document
        .descendants()
        .filter(|n| n.has_tag_name("item"))
        .map(|item| Item {
            title: text(item, "title"),
            link: text(item, "link"),
            description: page_text(&text(item, "description")),
            published: text(item, "pubDate"),
        })
        .filter(|item| !item.title.is_empty())
        .collect())
}

/// The items of a newsnow answer (`{items: [{id, title, url}]}`).
pub fn parse_newsnow(answer: &Value) -> Vec<Item> {
    answer["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| {
                    let title = i["title"].as_str()?.trim().to_owned();
                    let link = i["url"].as_str().or(i["mobileUrl"].as_str()).unwrap_or_default().to_owned();
                    (!title.is_empty()).then(|| Item {
                        title,
                        link,
                        description: String::new(),
                        published: String::new(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One item at random.
pub fn pick(items: &[Item], random: u64) -> Option<&Item> {
    items.get((random % items.len().max(1) as u64) as usize)
}

/// The readable text of an article page (or an HTML fragment): the paragraphs of its content
/// element (`.content_desc`, `.content`, `article`, `.article-content`, else the whole page),
/// blank ones dropped, cut at [`ARTICLE_CHARS`].
pub fn page_text(html: &str) -> String {
    let document = scraper::Html::parse_fragment(html);
    let paragraphs = |selector: &str| -> Vec<String> {
        let Ok(selector) = scraper::Selector::parse(selector) else { return Vec::new() };
        document
            .select(&selector)
            .map(|p| p.text().collect::<Vec<_>>().join("").split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|t| !t.is_empty())
            .collect()
    };
    let mut text = [".content_desc p", ".content p", "article p", ".article-content p", "p"]
        .iter()
        .map(|s| paragraphs(s))
        .find(|found| !found.is_empty())
        .map(|found| found.join("\n"))
        .unwrap_or_else(|| {
            document
                .root_element()
                .text()
                .collect::<Vec<_>>()
                .join(" ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        });
    if text.chars().count() > ARTICLE_CHARS {
        text = text.chars().take(ARTICLE_CHARS).collect();
    }
    text
}

/// What the LLM is given for an item (the Python plugins' wording).
pub fn news_text(item: &Item, lang: &str) -> String {
    let mut text = format!("根据下列数据，用{lang}回应用户的新闻查询请求：\n\n新闻标题: {}\n", item.title);
    if !item.published.is_empty() {
        text.push_str(&format!("发布时间: {}\n", item.published));
    }
    if !item.description.is_empty() {
        text.push_str(&format!("新闻内容: {}\n", item.description));
    }
    text.push_str(
        "\n(请以自然、流畅的方式向用户播报这条新闻标题，并提示用户可以要求获取详细内容，此时说“请详细介绍这条新闻”)",
    );
    text
}

/// What the LLM is given for an article's details.
pub fn detail_text(title: &str, body: &str, lang: &str) -> String {
    format!(
        "根据下列数据，用{lang}回应用户的新闻详情查询请求：\n\n新闻标题: {title}\n详细内容: {body}\n\n(请对上述新闻内容进行总结，提取关键信息，以自然、流畅的方式向用户播报)"
    )
}

/// The item remembered for "tell me more", as stored in `kv`.
pub fn remembered(item: &Item) -> Vec<u8> {
    serde_json::json!({"title": item.title, "link": item.link}).to_string().into_bytes()
}

/// The item stored by [`remembered`].
pub fn recalled(bytes: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(bytes).ok()?;
    Some((value["title"].as_str()?.to_owned(), value["link"].as_str().unwrap_or_default().to_owned()))
}

/// `text`, or its summary by `complete` (the host's LLM) when it is longer than
/// [`SUMMARY_OVER_CHARS`]; a failed summary keeps the text.
pub fn summarised(text: String, complete: impl FnOnce(&str) -> Result<String, ExtensionError>) -> String {
    if text.chars().count() <= SUMMARY_OVER_CHARS {
        return text;
    }
    match complete(&text) {
        Ok(summary) if !summary.trim().is_empty() => summary.trim().to_owned(),
        _ => text,
    }
}

/// The host's LLM asked to summarise an article in a few sentences.
pub fn summarise_with_host_llm(text: &str) -> Result<String, ExtensionError> {
    use xiaozhi_sdk::{Message, Role};
    xiaozhi_sdk::host::llm::complete(
        &[
            Message {
                role: Role::System,
                content:
                    "用不超过五句话概括下面这篇新闻的要点，只输出概括。Summarise the article in at most five sentences."
                        .into(),
            },
            Message { role: Role::User, content: text.to_owned() },
        ],
        Some(400),
    )
}

/// "Tell me more": the article of the last item told to this device (its `kv`), fetched with
/// `headers` and summarised when long, as the text for the LLM; what to say instead when there
/// is no such item or its page cannot be read.
pub fn tell_more(lang: &str, headers: &[(&str, &str)]) -> Result<String, ExtensionError> {
    let Some((title, link)) = xiaozhi_sdk::host::kv::get(LAST_KEY)?.as_deref().and_then(recalled) else {
        return Ok("抱歉，没有找到最近查询的新闻，请先获取一条新闻。".into());
    };
    let page = xiaozhi_sdk::web::send(&xiaozhi_sdk::web::get(&link, headers)).and_then(|r| xiaozhi_sdk::web::text(&r));
    match page.map(|html| page_text(&html)) {
        Ok(body) if !body.is_empty() => Ok(detail_text(&title, &summarised(body, summarise_with_host_llm), lang)),
        _ => Ok(format!("抱歉，无法获取《{title}》的详细内容。")),
    }
}

/// One of `items` at random, remembered for "tell me more", as the text for the LLM; `none`
/// when there are no items.
pub fn tell_one(items: &[Item], lang: &str, none: String) -> Result<String, ExtensionError> {
    let Some(item) = pick(items, random()) else { return Ok(none) };
    xiaozhi_sdk::host::kv::set(LAST_KEY, &remembered(item))?;
    Ok(news_text(item, lang))
}

/// A random number from the host (WASI random, through std's hasher seeding).
pub fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FEED: &str = r#"<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>中新网</title>
<item><title>第一条新闻</title><link>https://www.chinanews.com.cn/sh/1.shtml</link><description><![CDATA[<p>概要一</p>]]></description><pubDate>2026-12-06 10:00:00</pubDate></item>
<item><title> 第二条 </title><link>https://www.chinanews.com.cn/sh/2.shtml</link><description>概要二</description></item>
<item><title></title></item></channel></rss>"#;

    #[test]
    fn feeds_and_answers_become_items() {
        let items = parse_rss(FEED).expect("feed");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].title, "第一条新闻");
        assert_eq!(items[0].description, "概要一");
        assert_eq!(items[1].title, "第二条");
        assert!(parse_rss("<rss").is_err());
        let answer = serde_json::json!({"items": [{"id": "1", "title": "头条", "url": "https://x/1"}, {"title": ""}]});
        assert_eq!(
            parse_newsnow(&answer),
            vec![Item {
                title: "头条".into(),
                link: "https://x/1".into(),
                description: String::new(),
                published: String::new()
            }]
        );
        assert_eq!(pick(&items, 3).map(|i| i.title.as_str()), Some("第二条"));
        assert!(pick(&[], 3).is_none());
    }

    #[test]
    fn article_text_summary_and_memory() {
        let html = r#"<html><body><div class="nav"><p>导航</p></div><div class="content"><p>第一段。</p><p> </p><p>第二段。</p></div></body></html>"#;
        assert_eq!(page_text(html), "第一段。\n第二段。");
        let long = "字".repeat(SUMMARY_OVER_CHARS + 1);
        assert_eq!(summarised(long.clone(), |_| Ok("概括".into())), "概括");
        assert_eq!(summarised(long.clone(), |_| Err(ExtensionError::Failed("x".into()))), long);
        assert_eq!(summarised("短".into(), |_| panic!("not asked")), "短");
        let item = Item { title: "t".into(), link: "l".into(), description: String::new(), published: String::new() };
        assert_eq!(recalled(&remembered(&item)), Some(("t".into(), "l".into())));
        assert!(news_text(&item, "zh_CN").contains("新闻标题: t"));
    }
}
