//! SenseVoice's rich-transcription tags, read as the Python server's `lang_tag_filter` does.
//!
//! The model's raw output starts with four tags, `<|language|><|emotion|><|event|><|itn|>`, and
//! goes on with the text, e.g. `<|zh|><|NEUTRAL|><|Speech|><|woitn|>你好`. Every `<|…|>` tag
//! (anything but `|` between the bars) is removed from the text, which is then trimmed; the tags
//! are taken in order: the first is the language, the second the emotion (`NEUTRAL` when only
//! one tag is present), the third the audio event.

use super::SenseVoiceResult;

/// The Python server's emotion → emoji table (`EMOTION_EMOJI_MAP`).
const EMOTION_EMOJI: &[(&str, &str)] = &[
    ("HAPPY", "🙂"),
    ("SAD", "😔"),
    ("ANGRY", "😡"),
    ("NEUTRAL", "😶"),
    ("FEARFUL", "😰"),
    ("DISGUSTED", "🤢"),
    ("SURPRISED", "😲"),
    ("EMO_UNKNOWN", "😶"),
];

/// The emoji the Python server shows for a SenseVoice emotion tag name, if it has one.
pub fn emotion_emoji(emotion: &str) -> Option<&'static str> {
    EMOTION_EMOJI.iter().find(|(name, _)| *name == emotion).map(|(_, emoji)| *emoji)
}

/// Splits a raw SenseVoice transcript into its text and tags (see the module documentation).
/// Text without tags gives `language`, `emotion` and `event` of `None`.
pub fn parse_tags(raw: &str) -> SenseVoiceResult {
    let mut text = String::with_capacity(raw.len());
    let mut tags: Vec<&str> = Vec::new();
    let mut rest = raw;
    while let Some(open) = rest.find("<|") {
        let (before, from_open) = rest.split_at(open);
        text.push_str(before);
        let inner = &from_open[2..];
        // A tag is `<|`, one or more characters other than `|`, then `|>`.
        let name_len = inner.find('|').unwrap_or(inner.len());
        if name_len > 0 && inner[name_len..].starts_with("|>") {
            tags.push(&inner[..name_len]);
            rest = &inner[name_len + 2..];
        } else {
            // Not a tag: keep `<` and look again from the next character (`|` may open one).
            text.push('<');
            rest = &from_open[1..];
        }
    }
    text.push_str(rest);
    let mut tags = tags.into_iter();
    let language = tags.next().map(str::to_string);
    let emotion = language.as_ref().map(|_| tags.next().unwrap_or("NEUTRAL").to_string());
    let event = tags.next().map(str::to_string);
    SenseVoiceResult { text: text.trim().to_string(), language, emotion, event }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_tags_then_text() {
        let r = parse_tags("<|zh|><|HAPPY|><|Speech|><|withitn|>你好。");
        assert_eq!(r.text, "你好。");
        assert_eq!(r.language.as_deref(), Some("zh"));
        assert_eq!(r.emotion.as_deref(), Some("HAPPY"));
        assert_eq!(r.event.as_deref(), Some("Speech"));
        assert_eq!(emotion_emoji("HAPPY"), Some("🙂"));

        let r = parse_tags("<|en|><|NEUTRAL|><|Speech|><|woitn|> hello world ");
        assert_eq!(r.text, "hello world");
        assert_eq!(r.language.as_deref(), Some("en"));
        assert_eq!(r.emotion.as_deref(), Some("NEUTRAL"));
        assert_eq!(emotion_emoji("NEUTRAL"), Some("😶"));
        assert_eq!(emotion_emoji("EMO_UNKNOWN"), Some("😶"));
        assert_eq!(emotion_emoji("Speech"), None);
    }

    #[test]
    fn plain_text_has_no_tags() {
        let r = parse_tags("  plain text ");
        assert_eq!(r.text, "plain text");
        assert_eq!((r.language, r.emotion, r.event), (None, None, None));
        assert_eq!(parse_tags("").text, "");
    }

    #[test]
    fn one_tag_defaults_the_emotion_to_neutral() {
        let r = parse_tags("<|yue|>早晨");
        assert_eq!(r.text, "早晨");
        assert_eq!(r.language.as_deref(), Some("yue"));
        assert_eq!(r.emotion.as_deref(), Some("NEUTRAL"));
        assert_eq!(r.event, None);
    }

    #[test]
    fn tags_anywhere_are_removed_and_non_tags_kept() {
        let r = parse_tags("<|ja|><|SAD|>a <|BGM|>b <||> c <|x|y|> <|open");
        assert_eq!(r.text, "a b <||> c <|x|y|> <|open");
        assert_eq!(r.event.as_deref(), Some("BGM"));
        // `<` followed by a real tag.
        let r = parse_tags("a<<|en|>b|>");
        assert_eq!(r.text, "a<b|>");
        assert_eq!(r.language.as_deref(), Some("en"));
        // As with Python's `<\|([^|]+)\|>`: `<|x|y|>` holds no tag; `<|<|zh|>` holds `zh`.
        assert_eq!(parse_tags("<|x|y|>").language, None);
        let r = parse_tags("<|<|zh|>");
        assert_eq!((r.text.as_str(), r.language.as_deref()), ("<|", Some("zh")));
    }
}
