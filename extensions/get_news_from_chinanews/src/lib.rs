//! The `get_news_from_chinanews` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) with the Python server's
//! tool of that name: a random item of China News' RSS feed for the asked category, or the
//! details of the last item told to this device.

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool};

/// The feed setting and default feed of a category the user asked for.
pub fn feed_for(category: &str) -> (&'static str, &'static str) {
    match category.trim() {
        "社会" | "社会新闻" | "society" => ("society_rss_url", "https://www.chinanews.com.cn/rss/society.xml"),
        "国际" | "国际新闻" | "world" => ("world_rss_url", "https://www.chinanews.com.cn/rss/world.xml"),
        "财经" | "财经新闻" | "金融" | "经济" | "finance" => {
            ("finance_rss_url", "https://www.chinanews.com.cn/rss/finance.xml")
        }
        _ => ("default_rss_url", "https://www.chinanews.com.cn/rss/society.xml"),
    }
}

/// The exported tool.
pub struct ChinaNews;

impl Tool for ChinaNews {
    const NAME: &'static str = "get_news_from_chinanews";
    const DESCRIPTION: &'static str = "获取最新新闻，随机选择一条新闻进行播报。用户可以指定新闻类型，如社会新闻、国际新闻、财经新闻等；如果没有指定，默认播报社会新闻。\
用户要求获取详细内容（例如“请详细介绍这条新闻”）时，detail 设为 true，会获取上一条播报的新闻的详细内容。";
    const PARAMETERS: &'static str = r#"{"type":"object","properties":{"category":{"type":"string","description":"新闻类别：社会、国际、财经。可选"},"detail":{"type":"boolean","description":"是否获取上一条新闻的详细内容，默认false"},"lang":{"type":"string","description":"返回用户使用的语言code，例如zh_CN/zh_HK/en_US/ja_JP等，默认zh_CN"}},"required":["lang"]}"#;

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let lang = arguments.str("lang").unwrap_or("zh_CN");
        let config = xiaozhi_sdk::host::config::get;
        if arguments.bool("detail").unwrap_or(false) {
            return Ok(vec![Effect::ReplyToLlm(news::tell_more(lang, &[])?)]);
        }
        let (key, default) = feed_for(arguments.str("category").unwrap_or_default());
        let url = config(key).or_else(|| config("default_rss_url")).unwrap_or_else(|| default.to_owned());
        let feed = xiaozhi_sdk::web::text(&xiaozhi_sdk::web::send(&xiaozhi_sdk::web::get(&url, &[]))?)?;
        let items = news::parse_rss(&feed)?;
        let text = news::tell_one(&items, lang, "抱歉，未能获取到新闻信息，请稍后再试。".into())?;
        Ok(vec![Effect::ReplyToLlm(text)])
    }
}

xiaozhi_sdk::export_tools!(ChinaNews);

#[cfg(test)]
mod tests {
    #[test]
    fn categories_map_to_their_feeds() {
        assert_eq!(super::feed_for("国际新闻").0, "world_rss_url");
        assert_eq!(super::feed_for("财经").1, "https://www.chinanews.com.cn/rss/finance.xml");
        assert_eq!(super::feed_for("").0, "default_rss_url");
    }
}
