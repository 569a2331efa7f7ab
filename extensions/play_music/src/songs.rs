//! The music library and the choice of a song, as plain functions of the file names.

use std::path::Path;

/// Most songs listed (the rest of a huge folder is not considered).
pub const MAX_SONGS: usize = 5_000;
/// How deep sub-folders are searched.
pub const MAX_DEPTH: usize = 3;
/// Least similarity for a fuzzy match of a song's name (the Python plugin's 0.4).
pub const MIN_SIMILARITY: f64 = 0.4;
/// The file extensions played by default.
pub const DEFAULT_EXTENSIONS: [&str; 4] = [".mp3", ".wav", ".ogg", ".flac"];
/// The file extensions the host can decode (the Python server's own `.p3` is not one of them).
pub const PLAYABLE: [&str; 6] = [".mp3", ".wav", ".ogg", ".oga", ".opus", ".flac"];

/// What the user asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Any song.
    Random,
    /// Another song than before (chosen at random).
    Next,
    /// Stop the music.
    Stop,
    /// A song by (part of) its name.
    Named(String),
}

impl Request {
    /// Reads the `song_name` argument (the Python plugin's words for random, next and stop).
    pub fn parse(song_name: &str) -> Self {
        let text = song_name.trim();
        let lower = text.to_lowercase();
        match lower.as_str() {
            "" | "random" | "随机" | "随便" | "音乐" | "music" | "a song" | "any" => Self::Random,
            "next" | "下一首" | "换一首" | "下一曲" | "切歌" | "another" => Self::Next,
            "stop" | "停止" | "停止播放" | "别放了" | "不听了" | "关掉音乐" => Self::Stop,
            _ => Self::Named(text.to_owned()),
        }
    }
}

/// Whether a language tag or name means English.
pub fn is_english(language: &str) -> bool {
    let lower = language.trim().to_ascii_lowercase();
    lower == "en" || lower.starts_with("en-") || lower.starts_with("en_") || lower.starts_with("english")
}

/// The extensions to play: the operator's `music_ext` (a JSON list, or comma-separated) that the
/// host can decode ([`PLAYABLE`]), else [`DEFAULT_EXTENSIONS`]; lower case, each with its dot.
pub fn extensions(setting: Option<&str>) -> Vec<String> {
    let listed: Vec<String> = match setting.map(str::trim) {
        Some(text) if text.starts_with('[') => text
            .trim_matches(['[', ']'])
            .split(',')
            .map(|item| item.trim().trim_matches(['"', '\'']).to_owned())
            .collect(),
        Some(text) => text.split(',').map(|item| item.trim().to_owned()).collect(),
        None => Vec::new(),
    };
    let listed: Vec<String> = listed
        .into_iter()
        .filter(|ext| !ext.is_empty())
        .map(|ext| {
            let ext = ext.to_ascii_lowercase();
            if ext.starts_with('.') { ext } else { format!(".{ext}") }
        })
        .filter(|ext| PLAYABLE.contains(&ext.as_str()))
        .collect();
    if listed.is_empty() { DEFAULT_EXTENSIONS.iter().map(|e| (*e).to_owned()).collect() } else { listed }
}

/// The songs under `root` (paths relative to it, `/`-separated, sorted), at most [`MAX_SONGS`],
/// sub-folders down to [`MAX_DEPTH`]; an unreadable or missing folder has none.
pub fn scan(root: &Path, extensions: &[String]) -> Vec<String> {
    let mut songs = Vec::new();
    let mut folders = vec![(root.to_path_buf(), String::new(), 0usize)];
    while let Some((dir, prefix, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else { continue };
            if name.starts_with('.') {
                continue;
            }
            let relative = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                if depth + 1 < MAX_DEPTH {
                    folders.push((entry.path(), relative, depth + 1));
                }
            } else if extensions.iter().any(|ext| name.to_ascii_lowercase().ends_with(ext.as_str())) {
                songs.push(relative);
                if songs.len() >= MAX_SONGS {
                    songs.sort();
                    return songs;
                }
            }
        }
    }
    songs.sort();
    songs
}

/// A song's title: its file name without folder and extension.
pub fn title(song: &str) -> String {
    let name = song.rsplit('/').next().unwrap_or(song);
    match name.rfind('.') {
        Some(dot) if dot > 0 => name[..dot].to_owned(),
        _ => name.to_owned(),
    }
}

/// The first `most` titles, for the LLM when nothing matched.
pub fn titles(library: &[String], most: usize) -> String {
    library.iter().take(most).map(|song| title(song)).collect::<Vec<_>>().join(", ")
}

/// Lower case, without spaces and punctuation: what names are compared on.
fn normalized(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// How well `wanted` matches the title `title`, 0 to 1: 1 when one contains the other, else
/// the normalized Levenshtein similarity of the two.
pub fn similarity(wanted: &str, title: &str) -> f64 {
    let (a, b) = (normalized(wanted), normalized(title));
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    if a.contains(&b) || b.contains(&a) {
        return 1.0;
    }
    strsim::normalized_levenshtein(&a, &b)
}

/// The song for `request` (`random` picks among them); `None` when a named song matches none
/// well enough.
pub fn choose<'a>(library: &'a [String], request: &Request, random: u64) -> Option<&'a String> {
    if library.is_empty() {
        return None;
    }
    match request {
        Request::Named(name) => library
            .iter()
            .map(|song| (similarity(name, &title(song)), song))
            .filter(|(score, _)| *score >= MIN_SIMILARITY)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, song)| song),
        Request::Random | Request::Next | Request::Stop => library.get((random % library.len() as u64) as usize),
    }
}

/// The subtitle while the song plays.
pub fn now_playing(title: &str, english: bool) -> String {
    if english { format!("Playing: {title}") } else { format!("正在播放：《{title}》") }
}

/// What is said before the song plays (the Python plugin's phrasings).
pub fn announcement(title: &str, english: bool, random: u64) -> String {
    if english {
        let lines = ["Now playing {t}.", "Here is {t}.", "Coming up: {t}.", "Enjoy {t}."];
        lines[(random % lines.len() as u64) as usize].replace("{t}", title)
    } else {
        let lines = [
            "正在为您播放，《{t}》",
            "请欣赏歌曲，《{t}》",
            "即将为您播放，《{t}》",
            "现在为您带来，《{t}》",
            "让我们一起聆听，《{t}》",
            "接下来请欣赏，《{t}》",
            "此刻为您献上，《{t}》",
        ];
        lines[(random % lines.len() as u64) as usize].replace("{t}", title)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn library() -> Vec<String> {
        vec!["两只老虎.mp3".into(), "kids/小星星.wav".into(), "Yesterday - The Beatles.flac".into()]
    }

    #[test]
    fn requests_follow_the_plugins_words() {
        assert_eq!(Request::parse("random"), Request::Random);
        assert_eq!(Request::parse(" 下一首 "), Request::Next);
        assert_eq!(Request::parse("STOP"), Request::Stop);
        assert_eq!(Request::parse("两只老虎"), Request::Named("两只老虎".into()));
    }

    #[test]
    fn names_match_fuzzily_and_a_stranger_matches_nothing() {
        let songs = library();
        assert_eq!(choose(&songs, &Request::Named("两只老虎".into()), 0).map(String::as_str), Some("两只老虎.mp3"));
        assert_eq!(choose(&songs, &Request::Named("小星星".into()), 0).map(String::as_str), Some("kids/小星星.wav"));
        assert_eq!(
            choose(&songs, &Request::Named("yesterday".into()), 0).map(String::as_str),
            Some("Yesterday - The Beatles.flac")
        );
        assert_eq!(
            choose(&songs, &Request::Named("yesterdy".into()), 0).map(String::as_str),
            Some("Yesterday - The Beatles.flac")
        );
        assert_eq!(choose(&songs, &Request::Named("Bohemian Rhapsody".into()), 0), None);
        assert_eq!(choose(&songs, &Request::Random, 4).map(String::as_str), Some("kids/小星星.wav"));
    }

    #[test]
    fn the_library_is_scanned_with_its_extensions() {
        let dir = std::env::temp_dir().join(format!("play_music_test_{}", std::process::id()));
        std::fs::create_dir_all(dir.join("kids/deeper/deepest")).expect("mkdir");
        for file in ["a.mp3", "b.WAV", "c.txt", ".hidden.mp3", "kids/d.ogg", "kids/deeper/deepest/e.mp3"] {
            std::fs::write(dir.join(file), b"x").expect("write");
        }
        let found = scan(&dir, &extensions(None));
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(found, vec!["a.mp3", "b.WAV", "kids/d.ogg"]);
        assert_eq!(extensions(Some(r#"[".mp3", "wav", ".p3"]"#)), vec![".mp3", ".wav"]);
        assert_eq!(extensions(Some(".p3")), DEFAULT_EXTENSIONS.to_vec());
        assert_eq!(title("kids/小星星.wav"), "小星星");
        assert!(announcement("小星星", false, 0).contains("《小星星》"));
    }
}
