//! Audio an extension asks to play (the `play` effect): opened under the extension's grant,
//! decoded into PCM chunks for the session's speaker, which resamples, encodes and paces them
//! like speech (so `abort` stops them within a frame, as it stops speech).
//!
//! - **File** (`/music/song.mp3`): the path the extension sees in a media directory granted to
//!   it; it must stay inside that directory (no `..`, symbolic links resolved and checked) and be
//!   at most `limits.media_file_bytes`.
//! - **URL**: `http`/`https` on a host the extension's grant allows, downloaded (at most
//!   `limits.media_file_bytes`, within the extension's call timeout) before it plays.
//! - **Stream**: chunks the extension produces through its `media.read` export.
//!
//! MP3, WAV, Ogg Vorbis and FLAC are decoded packet by packet on a blocking thread; Ogg Opus
//! whole. Decoding stays at most [`CHUNKS_AHEAD`] chunks ahead of the speaker and stops as soon
//! as the speaker drops the stream (abort, barge-in, disconnect). At most `limits.media_seconds`
//! of audio are played from one effect.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::audio::decode::{self, AudioFormat, DecodeError};
use crate::audio::{AudioClip, chunks::AudioChunk};
use crate::extensions::{AudioSource, ExtensionScope, Kind, LoadedExtension};

/// Chunks decoded ahead of playback.
pub const CHUNKS_AHEAD: usize = 8;
/// Audio in one decoded chunk.
const CHUNK_MS: u64 = 200;

/// The bounds of playback (`limits.media_file_bytes`, `limits.media_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaLimits {
    /// Largest file or download, bytes.
    pub max_bytes: u64,
    /// Most audio played from one effect.
    pub max_seconds: u32,
}

impl MediaLimits {
    /// The bounds in `limits`.
    pub fn of(limits: &crate::config::LimitsConfig) -> Self {
        Self { max_bytes: limits.media_file_bytes, max_seconds: limits.media_seconds }
    }
}

/// Why audio could not be played; the text goes to the LLM as the tool's result.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The source is not one the extension may play.
    #[error("cannot play {what}: {why}")]
    Denied {
        /// The file or URL.
        what: String,
        /// Why.
        why: String,
    },
    /// The file or download could not be read.
    #[error("cannot read {what}: {why}")]
    Unreadable {
        /// The file or URL.
        what: String,
        /// Why.
        why: String,
    },
    /// The audio could not be decoded.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// The file or URL.
        what: String,
        /// The decoder's error.
        source: DecodeError,
    },
    /// The extension's stream failed before its first chunk.
    #[error("the audio stream failed: {0}")]
    Stream(String),
}

/// Opens `source`, played for the extension `ext` (whose grant decides what it may reach), and
/// starts decoding it: the returned channel yields its audio and ends with it.
pub async fn open(
    source: &AudioSource,
    ext: &Arc<LoadedExtension>,
    scope: &ExtensionScope,
    limits: MediaLimits,
) -> Result<mpsc::Receiver<AudioChunk>, MediaError> {
    match source {
        AudioSource::File(path) => {
            // Resolving and opening touch the file system: off the async workers.
            let (dirs, guest_path) = (ext.grant.media_dirs.clone(), path.clone());
            let opened = tokio::task::spawn_blocking(move || open_granted_file(&dirs, &guest_path, limits.max_bytes))
                .await
                .map_err(|e| MediaError::Unreadable { what: path.clone(), why: e.to_string() })?;
            let (file, real) = opened?;
            Ok(decode_in_background(path.clone(), Box::new(file), format_hint(&real), limits))
        }
        AudioSource::Url(url) => {
            let bytes = download(url, &ext.grant, ext.id(), scope.host.http_client(), limits.max_bytes).await?;
            let format = format_hint(Path::new(url.split(['?', '#']).next().unwrap_or_default()));
            Ok(decode_in_background(url.clone(), Box::new(std::io::Cursor::new(bytes)), format, limits))
        }
        AudioSource::Stream(token) => stream(token, ext, scope, limits).await,
    }
}

/// The real path of `guest_path` (`/<name>/<relative>`) in the media directory granted as
/// `<name>`: only normal components after the name (no `..`, `.`, or root), and the resolved
/// file (symbolic links followed) still inside the resolved directory.
pub fn resolve_granted(
    dirs: &std::collections::BTreeMap<String, PathBuf>,
    guest_path: &str,
) -> Result<PathBuf, MediaError> {
    let denied = |why: &str| MediaError::Denied { what: guest_path.to_owned(), why: why.to_owned() };
    let mut parts = Path::new(guest_path).components();
    if parts.next() != Some(Component::RootDir) {
        return Err(denied("give the path the extension sees, starting with /<media directory>/"));
    }
    let Some(Component::Normal(name)) = parts.next() else { return Err(denied("no media directory named")) };
    let name = name.to_str().unwrap_or_default();
    let Some(root) = dirs.get(name) else {
        return Err(denied(&format!("the media directory {name:?} is not granted to this extension")));
    };
    let rest: PathBuf = parts.clone().collect();
    if rest.as_os_str().is_empty() || !parts.all(|c| matches!(c, Component::Normal(_))) {
        return Err(denied("only plain names below the media directory are allowed"));
    }
    let root = root.canonicalize().map_err(|e| MediaError::Unreadable {
        what: guest_path.to_owned(),
        why: format!("media directory {name} ({}): {e}", root.display()),
    })?;
    let real = root
        .join(&rest)
        .canonicalize()
        .map_err(|e| MediaError::Unreadable { what: guest_path.to_owned(), why: e.to_string() })?;
    if !real.starts_with(&root) {
        return Err(denied("it leads outside the media directory"));
    }
    Ok(real)
}

/// Opens a granted file of at most `max_bytes`.
fn open_granted_file(
    dirs: &std::collections::BTreeMap<String, PathBuf>,
    guest_path: &str,
    max_bytes: u64,
) -> Result<(std::fs::File, PathBuf), MediaError> {
    let real = resolve_granted(dirs, guest_path)?;
    let unreadable = |why: String| MediaError::Unreadable { what: guest_path.to_owned(), why };
    let file = std::fs::File::open(&real).map_err(|e| unreadable(e.to_string()))?;
    let meta = file.metadata().map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("not a file".into()));
    }
    if meta.len() > max_bytes {
        return Err(MediaError::Denied {
            what: guest_path.to_owned(),
            why: format!("{} bytes, more than limits.media_file_bytes = {max_bytes}", meta.len()),
        });
    }
    Ok((file, real))
}

/// The decoder's hint from a file name's extension (the content is probed either way).
fn format_hint(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("wav" | "wave") => "wav",
        Some("ogg" | "oga" | "opus") => "ogg",
        Some("flac") => "flac",
        _ => "mp3",
    }
}

/// Downloads `url` for the extension `id` with `grant`: a granted host, `http`/`https`, at most
/// `max_bytes`, within the extension's call timeout.
async fn download(
    url: &str,
    grant: &crate::extensions::EffectiveGrant,
    id: &str,
    client: &reqwest::Client,
    max_bytes: u64,
) -> Result<Vec<u8>, MediaError> {
    let denied = |why: String| MediaError::Denied { what: url.to_owned(), why };
    let parsed = reqwest::Url::parse(url).map_err(|e| denied(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(denied("only http and https URLs play".into()));
    }
    let host = parsed.host_str().unwrap_or_default();
    if !grant.allows_host(host) {
        return Err(denied(format!("the host {host} is not granted to extension {id}")));
    }
    let unreadable = |why: String| MediaError::Unreadable { what: url.to_owned(), why };
    let fetch = async {
        let mut response = client.get(parsed).send().await.map_err(|e| unreadable(e.to_string()))?;
        if !response.status().is_success() {
            return Err(unreadable(format!("HTTP {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| unreadable(e.to_string()))? {
            if (body.len() + chunk.len()) as u64 > max_bytes {
                return Err(denied(format!("more than limits.media_file_bytes = {max_bytes} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    let limit = grant.timeout.max(Duration::from_secs(1));
    tokio::time::timeout(limit, fetch).await.map_err(|_| unreadable(format!("no whole answer within {limit:?}")))?
}

/// Decodes `source` on a blocking thread into chunks of about [`CHUNK_MS`], at most
/// `limits.max_seconds` in all, until the receiver goes away.
fn decode_in_background(
    what: String,
    mut source: Box<dyn symphonia::core::io::MediaSource>,
    format: &'static str,
    limits: MediaLimits,
) -> mpsc::Receiver<AudioChunk> {
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    tokio::task::spawn_blocking(move || {
        if is_ogg_opus(&mut source) {
            // symphonia has no Opus codec: Ogg Opus (at most `max_bytes`) is decoded whole.
            match read_all(&mut source)
                .and_then(|bytes| decode::decode_audio(&bytes, AudioFormat::Opus).map_err(|e| e.to_string()))
            {
                Ok(clip) => send_clip(&tx, clip, limits),
                Err(why) => tracing::warn!("cannot play {what}: {why}"),
            }
            return;
        }
        let mut left_ms = u64::from(limits.max_seconds) * 1000;
        let mut pending: Vec<i16> = Vec::new();
        let mut rate = 0;
        let send =
            |samples: Vec<i16>, sample_rate: u32| tx.blocking_send(AudioChunk::Pcm { samples, sample_rate }).is_ok();
        let result = decode::decode_stream(source, format, |mono, sample_rate| {
            if sample_rate != rate && !pending.is_empty() && !send(std::mem::take(&mut pending), rate) {
                return false;
            }
            rate = sample_rate;
            let room = (left_ms * u64::from(sample_rate) / 1000) as usize;
            let take = mono.len().min(room.saturating_sub(pending.len()));
            pending.extend_from_slice(&mono[..take]);
            if take < mono.len() {
                return false;
            }
            if pending.len() as u64 * 1000 >= CHUNK_MS * u64::from(sample_rate) {
                let chunk = std::mem::take(&mut pending);
                left_ms = left_ms.saturating_sub(chunk.len() as u64 * 1000 / u64::from(sample_rate.max(1)));
                return send(chunk, sample_rate);
            }
            true
        });
        if !pending.is_empty() && rate > 0 {
            send(std::mem::take(&mut pending), rate);
        }
        if let Err(err) = result {
            tracing::warn!("cannot play {what}: {err}");
        }
    });
    rx
}

/// Whether the source is an Ogg stream whose first page carries an Opus header (its position
/// is put back at the start either way).
fn is_ogg_opus(source: &mut Box<dyn symphonia::core::io::MediaSource>) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let mut head = [0u8; 64];
    let mut filled = 0;
    while filled < head.len() {
        match source.read(&mut head[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => filled += n,
        }
    }
    let _ = source.seek(SeekFrom::Start(0));
    let head = &head[..filled];
    head.starts_with(b"OggS") && head.windows(8).any(|w| w == b"OpusHead")
}

/// A whole clip as chunks, at most `limits.max_seconds`.
fn send_clip(tx: &mpsc::Sender<AudioChunk>, clip: AudioClip, limits: MediaLimits) {
    let rate = clip.sample_rate.max(1);
    let most = (u64::from(limits.max_seconds) * u64::from(rate)) as usize;
    let per_chunk = (CHUNK_MS * u64::from(rate) / 1000).max(1) as usize;
    for piece in clip.samples[..clip.samples.len().min(most)].chunks(per_chunk) {
        if tx.blocking_send(AudioChunk::Pcm { samples: piece.to_vec(), sample_rate: rate }).is_err() {
            return;
        }
    }
}

/// The whole source from its start.
fn read_all(source: &mut Box<dyn symphonia::core::io::MediaSource>) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek, SeekFrom};
    source.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    source.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Pulls the extension's stream `token` through `media.read`: the first chunk before this
/// returns (so a failing stream is an error the LLM hears about), the rest in the background.
async fn stream(
    token: &str,
    ext: &Arc<LoadedExtension>,
    scope: &ExtensionScope,
    limits: MediaLimits,
) -> Result<mpsc::Receiver<AudioChunk>, MediaError> {
    if !ext.manifest.has(Kind::Media) {
        return Err(MediaError::Denied {
            what: format!("the stream {token:?}"),
            why: format!("extension {} does not export media (kinds in extension.toml)", ext.id()),
        });
    }
    let first = scope
        .host
        .media_read(ext, token, 0, scope.context.clone())
        .await
        .map_err(|e| MediaError::Stream(e.to_string()))?;
    let (tx, rx) = mpsc::channel(CHUNKS_AHEAD);
    let Some(first) = first else { return Ok(rx) };
    let (ext, scope, token) = (Arc::clone(ext), scope.clone(), token.to_owned());
    tokio::spawn(async move {
        let mut left_ms = u64::from(limits.max_seconds) * 1000;
        let mut chunk = first;
        let mut index = 0u32;
        loop {
            let rate = u64::from(chunk.sample_rate.max(1));
            let most = (left_ms * rate / 1000) as usize;
            let mut samples = chunk.samples;
            let cut = samples.len() > most;
            samples.truncate(most);
            left_ms = left_ms.saturating_sub(samples.len() as u64 * 1000 / rate);
            if tx.send(AudioChunk::Pcm { samples, sample_rate: chunk.sample_rate }).await.is_err() || cut {
                return;
            }
            index = index.saturating_add(1);
            let next = tokio::select! {
                () = tx.closed() => return,
                next = scope.host.media_read(&ext, &token, index, scope.context.clone()) => next,
            };
            chunk = match next {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!("the audio stream {token:?} of {} broke off: {e}", ext.id());
                    return;
                }
            };
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn only_files_inside_a_granted_directory_resolve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let music = dir.path().join("music");
        std::fs::create_dir_all(music.join("albums")).expect("mkdir");
        std::fs::write(music.join("albums/song.mp3"), b"x").expect("write");
        std::fs::write(dir.path().join("secret.txt"), b"x").expect("write");
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), music.join("escape.mp3")).expect("symlink");
        let dirs = BTreeMap::from([("music".to_owned(), music.clone())]);

        let real = resolve_granted(&dirs, "/music/albums/song.mp3").expect("inside");
        assert_eq!(real, music.canonicalize().expect("real").join("albums/song.mp3"));
        for refused in ["/music/../secret.txt", "/music/escape.mp3", "/videos/a.mp3", "music/albums/song.mp3", "/music"]
        {
            assert!(resolve_granted(&dirs, refused).is_err(), "{refused}");
        }
        let err = resolve_granted(&dirs, "/music/escape.mp3").expect_err("outside").to_string();
        assert!(err.contains("outside the media directory"), "{err}");
        let err = resolve_granted(&dirs, "/videos/a.mp3").expect_err("not granted").to_string();
        assert!(err.contains("\"videos\" is not granted"), "{err}");
    }

    #[tokio::test]
    async fn a_wav_file_decodes_into_bounded_chunks_and_stops_at_the_limit() {
        let samples: Vec<i16> = (0..16_000 * 3).map(|i| ((i % 100) * 100) as i16).collect();
        let wav = decode::wav_bytes(&samples, 16_000);
        let limits = MediaLimits { max_bytes: 1 << 20, max_seconds: 2 };
        let mut rx = decode_in_background("t.wav".into(), Box::new(std::io::Cursor::new(wav)), "wav", limits);
        let mut total = 0;
        let mut chunks = 0;
        while let Some(AudioChunk::Pcm { samples, sample_rate }) = rx.recv().await {
            assert_eq!(sample_rate, 16_000);
            assert!(samples.len() <= 16_000, "a chunk is about {CHUNK_MS} ms");
            total += samples.len();
            chunks += 1;
        }
        assert_eq!(total, 32_000, "2 s of the 3 s file play");
        assert!(chunks >= 10, "{chunks} chunks");
    }

    /// Serves `body` once per connection on loopback, as a bare HTTP/1.1 answer.
    async fn serve(body: Vec<u8>) -> std::net::SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let head =
                    format!("HTTP/1.1 200 OK\r\ncontent-type: audio/wav\r\ncontent-length: {}\r\n\r\n", body.len());
                let _ = socket.write_all(head.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_url_plays_only_from_a_granted_host_and_within_the_size_limit() {
        let wav = decode::wav_bytes(&vec![100i16; 8_000], 16_000);
        let addr = serve(wav.clone()).await;
        let url = format!("http://{addr}/bell.wav");
        let client = reqwest::Client::new();
        let mut grant = crate::extensions::EffectiveGrant {
            memory_bytes: 1 << 20,
            timeout: Duration::from_secs(2),
            http_hosts: Default::default(),
            kv: false,
            llm: false,
            config: Default::default(),
            media_dirs: Default::default(),
        };
        let err = download(&url, &grant, "x", &client, 1 << 20).await.expect_err("not granted").to_string();
        assert!(err.contains("the host 127.0.0.1 is not granted to extension x"), "{err}");
        grant.http_hosts.insert("127.0.0.1".into());
        let bytes = download(&url, &grant, "x", &client, 1 << 20).await.expect("granted");
        assert_eq!(bytes, wav);
        let err = download(&url, &grant, "x", &client, 1_000).await.expect_err("too big").to_string();
        assert!(err.contains("more than limits.media_file_bytes = 1000"), "{err}");
        assert!(download("ftp://127.0.0.1/a", &grant, "x", &client, 1 << 20).await.is_err());
        // What was downloaded plays: half a second at 16 kHz.
        let limits = MediaLimits { max_bytes: 1 << 20, max_seconds: 10 };
        let mut rx = decode_in_background(url, Box::new(std::io::Cursor::new(bytes)), "wav", limits);
        let mut total = 0;
        while let Some(AudioChunk::Pcm { samples, .. }) = rx.recv().await {
            total += samples.len();
        }
        assert_eq!(total, 8_000);
    }

    #[test]
    fn an_oversized_file_is_refused_before_reading() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("big.wav"), vec![0u8; 2048]).expect("write");
        let dirs = BTreeMap::from([("m".to_owned(), dir.path().to_owned())]);
        let err = open_granted_file(&dirs, "/m/big.wav", 1024).expect_err("too big").to_string();
        assert!(err.contains("more than limits.media_file_bytes = 1024"), "{err}");
    }
}
