//! The `play_music` xiaozhi extension: a WebAssembly component (world
//! `xiaozhi:extension/tool-extension@0.2.0`, written with the guest SDK) with the Python server's
//! `play_music` tool. It lists the songs in the music directory the operator granted (seen at
//! `/music`), picks the one the user named (fuzzy match on the file name) or one at random, and
//! answers with effects: a spoken announcement, then the `play` of the file, which the host
//! decodes and plays paced like speech. "Next"/"下一首" picks another song at random; "stop"/
//! "停止" only says so (the user's speaking already stopped the song).
//!
//! The choice lives in [`songs`]; everything compiles natively, so `cargo test` runs the unit
//! tests on the build machine.

pub mod songs;

use xiaozhi_sdk::{Arguments, AudioSource, CallContext, Effect, ExtensionError, PlayAudio, Tool};

/// Where the granted directory `music` is seen.
pub const MUSIC_DIR: &str = "/music";

/// The exported tool.
pub struct PlayMusic;

impl Tool for PlayMusic {
    const NAME: &'static str = "play_music";
    const DESCRIPTION: &'static str = "唱歌、听歌、播放音乐的方法。Play a song from the local music library: \
when the user asks to play music without naming a song, pass 'random'; when they name one, pass its name \
(e.g. 用户：播放两只老虎 → song_name: 两只老虎). 'next' plays another song, 'stop' stops.";
    const PARAMETERS: &'static str = r#"{"type":"object","properties":{"song_name":{"type":"string","description":"歌曲名称；用户没有指定具体歌名时为 'random'。The song's name, or 'random' when the user names none; 'next' for another song, 'stop' to stop."}},"required":["song_name"]}"#;

    fn call(arguments: &Arguments, context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let english = songs::is_english(&context.language);
        let wanted = songs::Request::parse(arguments.str("song_name").unwrap_or("random"));
        if wanted == songs::Request::Stop {
            return Ok(vec![Effect::Speak(
                if english { "OK, the music has stopped." } else { "好的，已停止播放。" }.into(),
            )]);
        }
        let extensions = songs::extensions(xiaozhi_sdk::host::config::get("music_ext").as_deref());
        let library = songs::scan(std::path::Path::new(MUSIC_DIR), &extensions);
        if library.is_empty() {
            let text = if english {
                "There is no music in the music folder yet."
            } else {
                "音乐文件夹里还没有歌曲。"
            };
            return Ok(vec![Effect::Speak(text.into()), Effect::Note("the music folder is empty".into())]);
        }
        let Some(song) = songs::choose(&library, &wanted, random()) else {
            let text = if english {
                "I could not find that song, so I did not play anything."
            } else {
                "没有找到这首歌。"
            };
            return Ok(vec![Effect::ReplyToLlm(format!("{text} Songs available: {}", songs::titles(&library, 20)))]);
        };
        let title = songs::title(song);
        Ok(vec![
            Effect::Speak(songs::announcement(&title, english, random())),
            Effect::Play(PlayAudio {
                source: AudioSource::File(format!("{MUSIC_DIR}/{song}")),
                title: Some(songs::now_playing(&title, english)),
            }),
        ])
    }
}

/// A random number from the host (WASI random, through std's hasher seeding).
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

xiaozhi_sdk::export_tools!(PlayMusic);
