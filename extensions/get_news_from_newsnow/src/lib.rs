//! The `get_news_from_newsnow` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) with the Python server's
//! tool of that name: a random headline of a newsnow source, or the details of the last headline
//! told to this device.

use xiaozhi_sdk::{Arguments, CallContext, Effect, ExtensionError, Tool, ToolDefinition};

/// The sources newsnow knows: Chinese name → id.
pub const SOURCES: [(&str, &str); 35] = [
    ("V2EX", "v2ex-share"),
    ("知乎", "zhihu"),
    ("微博", "weibo"),
    ("联合早报", "zaobao"),
    ("酷安", "coolapk"),
    ("MKTNews", "mktnews-flash"),
    ("华尔街见闻", "wallstreetcn-quick"),
    ("36氪", "36kr-quick"),
    ("抖音", "douyin"),
    ("虎扑", "hupu"),
    ("百度贴吧", "tieba"),
    ("今日头条", "toutiao"),
    ("IT之家", "ithome"),
    ("澎湃新闻", "thepaper"),
    ("卫星通讯社", "sputniknewscn"),
    ("参考消息", "cankaoxiaoxi"),
    ("远景论坛", "pcbeta-windows11"),
    ("财联社", "cls-depth"),
    ("雪球", "xueqiu-hotstock"),
    ("格隆汇", "gelonghui"),
    ("法布财经", "fastbull-express"),
    ("Solidot", "solidot"),
    ("Hacker News", "hackernews"),
    ("Product Hunt", "producthunt"),
    ("Github", "github-trending-today"),
    ("哔哩哔哩", "bilibili-hot-search"),
    ("快手", "kuaishou"),
    ("靠谱新闻", "kaopu"),
    ("金十数据", "jin10"),
    ("百度热搜", "baidu"),
    ("牛客", "nowcoder"),
    ("少数派", "sspai"),
    ("稀土掘金", "juejin"),
    ("凤凰网", "ifeng"),
    ("虫部落", "chongbuluo-latest"),
];
/// The sources offered when `news_sources` is not set.
pub const DEFAULT_SOURCES: &str = "澎湃新闻;百度热搜;财联社";

/// The sources offered: the `news_sources` names newsnow knows, in order.
pub fn offered(setting: Option<&str>) -> Vec<(&'static str, &'static str)> {
    let names = setting.map(str::trim).filter(|s| !s.is_empty()).unwrap_or(DEFAULT_SOURCES);
    let found: Vec<_> = names
        .split([';', '；', ','])
        .filter_map(|name| SOURCES.iter().find(|(n, _)| *n == name.trim()).copied())
        .collect();
    if found.is_empty() { vec![("澎湃新闻", "thepaper")] } else { found }
}

/// The id of the source asked for, if offered; else the first offered (as the plugin falls back
/// to 澎湃新闻).
pub fn source_id(asked: &str, offered: &[(&'static str, &'static str)]) -> (&'static str, &'static str) {
    let asked = asked.trim();
    let asked = if asked == "百度新闻" { "百度热搜" } else { asked };
    offered
        .iter()
        .find(|(name, id)| *name == asked || *id == asked)
        .or(offered.first())
        .copied()
        .unwrap_or(("澎湃新闻", "thepaper"))
}

/// The exported tool.
pub struct NewsNow;

impl Tool for NewsNow {
    const NAME: &'static str = "get_news_from_newsnow";

    fn definition() -> ToolDefinition {
        let sources = offered(xiaozhi_sdk::host::config::get("news_sources").as_deref());
        let names: Vec<&str> = sources.iter().map(|(n, _)| *n).collect();
        ToolDefinition {
            name: Self::NAME.into(),
            description: format!(
                "获取最新新闻，随机选择一条新闻进行播报。用户可以选择不同的新闻源，标准的名称是：{}。例如用户要求百度新闻，其实就是百度热搜。如果没有指定，默认从{}获取。\
用户要求获取详细内容（例如“请详细介绍这条新闻”）时，detail 设为 true。",
                names.join("、"),
                names.first().copied().unwrap_or("澎湃新闻")
            ),
            parameters_json: r#"{"type":"object","properties":{"source":{"type":"string","description":"新闻源的标准中文名称，可选"},"detail":{"type":"boolean","description":"是否获取上一条新闻的详细内容，默认false"},"lang":{"type":"string","description":"返回用户使用的语言code，例如zh_CN/en_US，默认zh_CN"}},"required":["lang"]}"#.into(),
        }
    }

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let lang = arguments.str("lang").unwrap_or("zh_CN");
        if arguments.bool("detail").unwrap_or(false) {
            return Ok(vec![Effect::ReplyToLlm(news::tell_more(lang, &[("User-Agent", "Mozilla/5.0")])?)]);
        }
        let sources = offered(xiaozhi_sdk::host::config::get("news_sources").as_deref());
        let (name, id) = source_id(arguments.str("source").unwrap_or_default(), &sources);
        let base =
            xiaozhi_sdk::host::config::get("url").unwrap_or_else(|| "https://newsnow.busiyi.world/api/s?id=".into());
        let request = xiaozhi_sdk::web::get(&format!("{}{id}", base.trim()), &[("User-Agent", "Mozilla/5.0")]);
        let items = match xiaozhi_sdk::web::send(&request).and_then(|r| xiaozhi_sdk::web::json(&r)) {
            Ok(answer) => news::parse_newsnow(&answer),
            Err(_) => Vec::new(),
        };
        let none = format!("抱歉，未能从{name}获取到新闻信息，请稍后再试或尝试其他新闻源。");
        Ok(vec![Effect::ReplyToLlm(news::tell_one(&items, lang, none)?)])
    }
}

xiaozhi_sdk::export_tools!(NewsNow);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_offered_and_found_by_name() {
        let sources = offered(None);
        assert_eq!(sources, vec![("澎湃新闻", "thepaper"), ("百度热搜", "baidu"), ("财联社", "cls-depth")]);
        assert_eq!(source_id("百度新闻", &sources).1, "baidu");
        assert_eq!(source_id("知乎", &sources).1, "thepaper", "not offered: the first one");
        assert_eq!(offered(Some("知乎;不存在")), vec![("知乎", "zhihu")]);
    }
}
