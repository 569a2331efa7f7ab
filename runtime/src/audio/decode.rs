//! Decoding of the audio that providers answer with (WAV, MP3, raw PCM) and that extensions
//! play (also Ogg Vorbis and FLAC, packet by packet: [`decode_stream`]) into mono 16-bit PCM,
//! and encoding of PCM into an in-memory WAV file for ASR uploads.
//!
//! WAV, MP3, Vorbis and FLAC go through `symphonia`. The content is sniffed before the format hint is trusted:
//! bytes that start with `RIFF` are WAV and bytes that start with an ID3 tag or an MPEG frame sync
//! are MP3, whatever the provider was asked for. Any sample format becomes `i16`; several
//! channels are averaged into one. Nothing here panics on bad input: empty, truncated or
//! undecodable bytes give a [`DecodeError`].

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::AudioClip;

/// The encoding of a provider's audio answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioFormat {
    /// A RIFF/WAVE file.
    Wav,
    /// An MPEG layer III stream (with or without an ID3 tag).
    Mp3,
    /// Headerless 16-bit little-endian mono PCM.
    Pcm {
        /// Samples per second.
        sample_rate: u32,
    },
    /// Ogg Opus (mono).
    Opus,
}

impl AudioFormat {
    /// Parses a config `format` value: `wav`, `mp3`, or `pcm`/`raw` (16-bit little-endian mono at
    /// `pcm_rate`). Case is ignored; anything else is `None`.
    pub fn from_name(name: &str, pcm_rate: u32) -> Option<Self> {
        match name.trim().to_ascii_lowercase().as_str() {
            "wav" | "wave" => Some(Self::Wav),
            "mp3" => Some(Self::Mp3),
            "pcm" | "raw" => Some(Self::Pcm { sample_rate: pcm_rate }),
            "opus" | "ogg" => Some(Self::Opus),
            _ => None,
        }
    }
}

/// Why audio bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// There were no bytes at all.
    #[error("the audio is empty")]
    Empty,
    /// Raw PCM was announced with a sample rate of 0.
    #[error("raw PCM needs a sample rate above 0")]
    NoSampleRate,
    /// The container or codec could not be recognised or read.
    #[error("cannot read the {format} audio: {message}")]
    Unreadable {
        /// The format that was tried.
        format: &'static str,
        /// What the decoder reported.
        message: String,
    },
    /// The file was readable but held no samples.
    #[error("the {format} audio holds no samples")]
    NoSamples {
        /// The format that was decoded.
        format: &'static str,
    },
}

/// What the first bytes say the content is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Wav,
    Mp3,
    Unknown,
}

fn sniff(bytes: &[u8]) -> Sniffed {
    if bytes.starts_with(b"RIFF") {
        Sniffed::Wav
    } else if bytes.starts_with(b"ID3") {
        Sniffed::Mp3
    } else if let [first, second, ..] = bytes
        && *first == 0xFF
        && second & 0xE0 == 0xE0
        // Layer bits 01 = layer III (MP3); 00 is reserved.
        && (second >> 1) & 0x03 == 0x01
    {
        Sniffed::Mp3
    } else {
        Sniffed::Unknown
    }
}

/// Decodes a provider's audio answer into mono 16-bit PCM.
///
/// `format` is what the provider was asked for; WAV (`RIFF`) content is always decoded as WAV,
/// and MP3 content announced as WAV is decoded as MP3. Raw PCM is only assumed when `format` is
/// [`AudioFormat::Pcm`] and the bytes are neither a WAV file nor an ID3-tagged MP3; a trailing odd
/// byte is dropped.
pub fn decode_audio(bytes: &[u8], format: AudioFormat) -> Result<AudioClip, DecodeError> {
    if bytes.is_empty() {
        return Err(DecodeError::Empty);
    }
    if bytes.starts_with(b"OggS") || format == AudioFormat::Opus {
        return decode_ogg_opus(bytes);
    }
    let sniffed = sniff(bytes);
    match (sniffed, format) {
        (Sniffed::Wav, _) => decode_container(bytes, "wav"),
        // An ID3 tag is unmistakable (a bare MPEG sync could be the first PCM sample). The tag is
        // skipped: only the frames matter, and symphonia rejects some valid tags (an empty one).
        _ if bytes.starts_with(b"ID3") => decode_container(skip_id3v2(bytes), "mp3"),
        (_, AudioFormat::Pcm { sample_rate }) => decode_pcm(bytes, sample_rate),
        (Sniffed::Mp3, _) | (Sniffed::Unknown, AudioFormat::Mp3) => decode_container(bytes, "mp3"),
        (Sniffed::Unknown, AudioFormat::Wav) => decode_container(bytes, "wav"),
        (_, AudioFormat::Opus) => decode_ogg_opus(bytes),
    }
}

/// Decodes a whole Ogg Opus file at 48 kHz.
fn decode_ogg_opus(bytes: &[u8]) -> Result<AudioClip, DecodeError> {
    let mut demuxer = super::chunks::ChunkDecoder::new(AudioFormat::Opus);
    let mut chunks = demuxer.push(bytes)?;
    chunks.extend(demuxer.finish()?);
    let unreadable = |e: super::opus::AudioError| DecodeError::Unreadable { format: "opus", message: e.to_string() };
    let mut decoder = super::opus::OpusDecoder::new(48_000).map_err(unreadable)?;
    let mut scratch = vec![0i16; 5760];
    let mut samples = Vec::new();
    for chunk in chunks {
        if let super::chunks::AudioChunk::Opus { packet, .. } = chunk {
            let n = decoder.decode(&packet, &mut scratch).map_err(unreadable)?;
            samples.extend_from_slice(&scratch[..n]);
        }
    }
    if samples.is_empty() {
        return Err(DecodeError::NoSamples { format: "opus" });
    }
    Ok(AudioClip { samples, sample_rate: 48_000 })
}

/// The bytes after the ID3v2 tag that `bytes` starts with (all of them when the header is
/// short or announces more than there is, so that the decoder reports the problem).
fn skip_id3v2(bytes: &[u8]) -> &[u8] {
    let Some(header) = bytes.get(..10) else { return bytes };
    // Sizes are "syncsafe": 7 bits per byte.
    let size = header[6..10].iter().fold(0usize, |acc, &b| (acc << 7) | usize::from(b & 0x7F));
    let footer = if header[5] & 0x10 != 0 { 10 } else { 0 };
    bytes.get(10 + size + footer..).filter(|rest| !rest.is_empty()).unwrap_or(bytes)
}

fn decode_pcm(bytes: &[u8], sample_rate: u32) -> Result<AudioClip, DecodeError> {
    if sample_rate == 0 {
        return Err(DecodeError::NoSampleRate);
    }
    let samples: Vec<i16> = bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
    if samples.is_empty() {
        return Err(DecodeError::NoSamples { format: "pcm" });
    }
    Ok(AudioClip { samples, sample_rate })
}

/// Decodes WAV or MP3 with symphonia, guarding against a panic inside the decoder.
fn decode_container(bytes: &[u8], format: &'static str) -> Result<AudioClip, DecodeError> {
    match std::panic::catch_unwind(|| decode_with_symphonia(bytes, format)) {
        Ok(result) => result,
        Err(_) => Err(DecodeError::Unreadable { format, message: "the decoder failed on malformed data".into() }),
    }
}

fn unreadable(format: &'static str, err: impl std::fmt::Display) -> DecodeError {
    DecodeError::Unreadable { format, message: err.to_string() }
}

fn decode_with_symphonia(bytes: &[u8], format: &'static str) -> Result<AudioClip, DecodeError> {
    let mut owned = bytes.to_vec();
    if format == "wav" {
        repair_wav_sizes(&mut owned);
    }
    let mut samples: Vec<i16> = Vec::new();
    let mut sample_rate = 0;
    decode_stream(Box::new(Cursor::new(owned)), format, |mono, rate| {
        samples.extend_from_slice(mono);
        sample_rate = rate;
        true
    })?;
    if samples.is_empty() {
        return Err(DecodeError::NoSamples { format });
    }
    if sample_rate == 0 {
        return Err(unreadable(format, "no sample rate"));
    }
    Ok(AudioClip { samples, sample_rate })
}

/// Decodes a container (`format` is the file-extension hint: `wav`, `mp3`, `ogg`, `flac`; the
/// content is probed either way) packet by packet, handing `sink` each packet's samples mixed
/// down to mono with their rate, until the end or until `sink` answers `false`. A corrupt frame
/// is skipped and a truncated tail ends the stream, as players do. Ogg Opus is not decoded here
/// (symphonia has no Opus codec): it gives [`DecodeError::Unreadable`] naming the codec.
pub fn decode_stream(
    source: Box<dyn symphonia::core::io::MediaSource>,
    format: &'static str,
    mut sink: impl FnMut(&[i16], u32) -> bool,
) -> Result<(), DecodeError> {
    let source = MediaSourceStream::new(source, Default::default());
    let mut hint = Hint::new();
    hint.with_extension(format);
    let probed = symphonia::default::get_probe()
        .format(&hint, source, &FormatOptions::default(), &MetadataOptions::default())
        .map_err(|e| unreadable(format, e))?;
    let mut reader = probed.format;
    let track = reader
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| unreadable(format, "no audio track"))?;
    let track_id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| unreadable(format, e))?;

    let mut mono: Vec<i16> = Vec::new();
    let mut decoded_any = false;
    let mut buffer: Option<SampleBuffer<i16>> = None;
    loop {
        let packet = match reader.next_packet() {
            Ok(packet) => packet,
            // The end of the stream, or a truncated tail: keep what was decoded.
            Err(SymphoniaError::IoError(_)) | Err(SymphoniaError::ResetRequired) => break,
            Err(SymphoniaError::DecodeError(_)) if decoded_any => break,
            Err(e) => return Err(unreadable(format, e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            // A corrupt frame: skip it, as players do.
            Err(SymphoniaError::DecodeError(_)) => continue,
            Err(SymphoniaError::IoError(_)) => break,
            Err(e) => return Err(unreadable(format, e)),
        };
        let spec = *decoded.spec();
        if decoded.frames() == 0 {
            continue;
        }
        let channels = spec.channels.count().max(1);
        let capacity = decoded.capacity() as u64;
        let buf = match &mut buffer {
            Some(buf) if buf.capacity() >= decoded.capacity() => buf,
            slot => slot.insert(SampleBuffer::<i16>::new(capacity, spec)),
        };
        buf.copy_interleaved_ref(decoded);
        let interleaved = buf.samples();
        mono.clear();
        if channels == 1 {
            mono.extend_from_slice(interleaved);
        } else {
            mono.extend(interleaved.chunks_exact(channels).map(|frame| {
                let sum: i32 = frame.iter().map(|&s| i32::from(s)).sum();
                // The mean of i16 values always fits an i16.
                (sum / channels as i32) as i16
            }));
        }
        decoded_any = true;
        if !sink(&mono, spec.rate) {
            break;
        }
    }
    Ok(())
}

/// Fixes the sizes that streaming TTS servers leave unknown in a WAV header (`0` or
/// `0xFFFFFFFF`, or larger than what was sent): the RIFF size becomes the real length and the
/// `data` chunk is made to run to the end of the bytes. Other chunks are left alone.
fn repair_wav_sizes(wav: &mut [u8]) {
    let read_u32 = |wav: &[u8], at: usize| -> Option<u32> {
        let field = wav.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([field[0], field[1], field[2], field[3]]))
    };
    let total = wav.len();
    if total < 12 || !wav.starts_with(b"RIFF") || wav.get(8..12) != Some(b"WAVE".as_slice()) {
        return;
    }
    let riff_size = u32::try_from(total - 8).unwrap_or(u32::MAX);
    wav[4..8].copy_from_slice(&riff_size.to_le_bytes());
    let mut at = 12usize;
    while let Some(size) = read_u32(wav, at + 4) {
        let body = at + 8;
        let remaining = total - body;
        if wav.get(at..at + 4) == Some(b"data".as_slice()) {
            if size == 0 || size as usize > remaining {
                let fixed = u32::try_from(remaining).unwrap_or(u32::MAX);
                wav[at + 4..at + 8].copy_from_slice(&fixed.to_le_bytes());
            }
            return;
        }
        // Chunks are padded to an even length.
        let padded = size as usize + (size as usize & 1);
        match body.checked_add(padded) {
            Some(next) if next < total => at = next,
            _ => return,
        }
    }
}

/// Encodes mono 16-bit PCM as a complete WAV file in memory (44-byte header, PCM format 1).
pub fn wav_bytes(samples: &[i16], sample_rate: u32) -> Vec<u8> {
    // WAV sizes are 32-bit: clamp rather than overflow on absurd lengths (over 2 GiB of audio).
    let data_len = u32::try_from(samples.len().saturating_mul(2)).unwrap_or(u32::MAX - 36);
    let data_len = data_len.min(u32::MAX - 36) & !1;
    let sample_count = (data_len / 2) as usize;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVE");
    out.extend_from_slice(b"fmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&sample_rate.to_le_bytes());
    out.extend_from_slice(&sample_rate.saturating_mul(2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples.iter().take(sample_count) {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(len: usize, rate: u32) -> Vec<i16> {
        (0..len).map(|i| ((i as f32 * 440.0 * std::f32::consts::TAU / rate as f32).sin() * 12_000.0) as i16).collect()
    }

    #[test]
    fn format_names() {
        assert_eq!(AudioFormat::from_name("wav", 24_000), Some(AudioFormat::Wav));
        assert_eq!(AudioFormat::from_name("MP3", 24_000), Some(AudioFormat::Mp3));
        assert_eq!(AudioFormat::from_name("pcm", 24_000), Some(AudioFormat::Pcm { sample_rate: 24_000 }));
        assert_eq!(AudioFormat::from_name("raw", 8_000), Some(AudioFormat::Pcm { sample_rate: 8_000 }));
        assert_eq!(AudioFormat::from_name("opus", 8_000), Some(AudioFormat::Opus));
        assert_eq!(AudioFormat::from_name("flac", 8_000), None);
    }

    #[test]
    fn wav_round_trip() {
        let samples = tone(4_000, 16_000);
        let wav = wav_bytes(&samples, 16_000);
        assert_eq!(wav.len(), 44 + samples.len() * 2);
        assert_eq!(&wav[..4], b"RIFF");
        // hound agrees on the header.
        let reader = hound::WavReader::new(Cursor::new(&wav)).expect("hound reads it");
        assert_eq!(reader.spec().sample_rate, 16_000);
        assert_eq!(reader.spec().channels, 1);
        assert_eq!(reader.spec().bits_per_sample, 16);
        let clip = decode_audio(&wav, AudioFormat::Wav).expect("decodes");
        assert_eq!(clip.sample_rate, 16_000);
        assert_eq!(clip.samples, samples);
        // RIFF content wins over a wrong hint.
        let clip = decode_audio(&wav, AudioFormat::Pcm { sample_rate: 8_000 }).expect("decodes");
        assert_eq!(clip.sample_rate, 16_000);
        assert_eq!(clip.samples, samples);
        let clip = decode_audio(&wav, AudioFormat::Mp3).expect("decodes");
        assert_eq!(clip.samples, samples);
    }

    #[test]
    fn streamed_wav_with_unknown_sizes() {
        // Streaming TTS servers write 0xFFFFFFFF (or 0) as the RIFF and data sizes.
        let samples = tone(3_000, 24_000);
        for size in [u32::MAX, 0] {
            let mut wav = wav_bytes(&samples, 24_000);
            wav[4..8].copy_from_slice(&size.to_le_bytes());
            wav[40..44].copy_from_slice(&size.to_le_bytes());
            let clip = decode_audio(&wav, AudioFormat::Wav).expect("decodes");
            assert_eq!(clip.sample_rate, 24_000);
            assert_eq!(clip.samples, samples, "size {size:#x}");
        }
    }

    #[test]
    fn stereo_float_wav_is_averaged_to_mono_i16() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut cursor = Cursor::new(Vec::new());
        {
            let mut writer = hound::WavWriter::new(&mut cursor, spec).expect("writer");
            for _ in 0..1_000 {
                writer.write_sample(0.5f32).expect("left");
                writer.write_sample(-0.25f32).expect("right");
            }
            writer.finalize().expect("finalize");
        }
        let clip = decode_audio(cursor.get_ref(), AudioFormat::Wav).expect("decodes");
        assert_eq!(clip.sample_rate, 22_050);
        assert_eq!(clip.samples.len(), 1_000);
        // (0.5 - 0.25) / 2 = 0.125 of full scale.
        for s in &clip.samples {
            assert!((i32::from(*s) - 4_096).abs() <= 2, "sample {s}");
        }
    }

    #[test]
    fn raw_pcm() {
        let samples = vec![0i16, 1, -1, i16::MAX, i16::MIN, 1234];
        let mut bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        bytes.push(0x7F); // A dangling odd byte is dropped.
        let clip = decode_audio(&bytes, AudioFormat::Pcm { sample_rate: 24_000 }).expect("decodes");
        assert_eq!(clip, AudioClip { samples, sample_rate: 24_000 });
        assert!(matches!(
            decode_audio(&[1], AudioFormat::Pcm { sample_rate: 24_000 }),
            Err(DecodeError::NoSamples { .. })
        ));
        assert!(matches!(decode_audio(&[1, 2], AudioFormat::Pcm { sample_rate: 0 }), Err(DecodeError::NoSampleRate)));
    }

    #[test]
    fn espeak_wav_decodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("hello.wav");
        let status = std::process::Command::new("espeak-ng")
            .arg("-w")
            .arg(&path)
            .arg("Hello, this is a test of the decoder.")
            .status()
            .expect("espeak-ng is installed");
        assert!(status.success());
        let bytes = std::fs::read(&path).expect("read wav");
        let clip = decode_audio(&bytes, AudioFormat::Wav).expect("decodes");
        assert_eq!(clip.sample_rate, 22_050);
        // About two seconds of speech.
        assert!(clip.duration_ms() > 1_000 && clip.duration_ms() < 6_000, "{} ms", clip.duration_ms());
        assert!(clip.samples.iter().any(|s| s.unsigned_abs() > 1_000), "speech is not silent");
    }

    /// Checks a decoded MP3 tone: rate, length, and that it is loud (not silence or noise floor).
    fn check_mp3_clip(clip: &AudioClip, rate: u32, min_ms: u64, max_ms: u64) {
        assert_eq!(clip.sample_rate, rate);
        assert!(clip.duration_ms() >= min_ms && clip.duration_ms() <= max_ms, "{} ms", clip.duration_ms());
        let peak = clip.samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0);
        assert!(peak > 4_000, "peak {peak}");
    }

    #[test]
    fn embedded_mp3_decodes() {
        use base64::Engine as _;
        // 0.3 s of a 440 Hz sine, 16 kHz mono, 32 kbit/s, made with `sox -n -r 16000 -c 1 -C 32
        // t.mp3 synth 0.3 sine 440 vol 0.5`.
        let bytes = base64::engine::general_purpose::STANDARD.decode(EMBEDDED_MP3).expect("base64");
        let clip = decode_audio(&bytes, AudioFormat::Mp3).expect("decodes");
        check_mp3_clip(&clip, 16_000, 250, 500);
        // Announced as WAV: the MPEG content is sniffed and decoded all the same.
        let clip = decode_audio(&bytes, AudioFormat::Wav).expect("decodes");
        check_mp3_clip(&clip, 16_000, 250, 500);
        // With an ID3v2 tag in front (empty, or with a title frame), even a `pcm` hint is overruled.
        let empty_tag = b"ID3\x04\x00\x00\x00\x00\x00\x00".as_slice();
        let title_tag = b"ID3\x03\x00\x00\x00\x00\x00\x0FTIT2\x00\x00\x00\x05\x00\x00\x00test".as_slice();
        for tag in [empty_tag, title_tag] {
            let tagged = [tag, &bytes].concat();
            let clip = decode_audio(&tagged, AudioFormat::Pcm { sample_rate: 24_000 }).expect("decodes");
            check_mp3_clip(&clip, 16_000, 250, 500);
        }
        // A tag and nothing after it is an error, not a panic.
        assert!(decode_audio(title_tag, AudioFormat::Mp3).is_err());
        // Truncated in the middle of a frame: what came before is kept, no panic.
        let half = &bytes[..bytes.len() / 2];
        let clip = decode_audio(half, AudioFormat::Mp3).expect("the frames before the cut decode");
        assert!((50..250).contains(&clip.duration_ms()), "{} ms", clip.duration_ms());
    }

    #[test]
    fn sox_mp3_decodes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tone.mp3");
        let made = std::process::Command::new("sox")
            .args(["-n", "-r", "24000", "-c", "2"])
            .arg(&path)
            .args(["synth", "1.0", "sine", "440", "vol", "0.5"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(made, "sox cannot write MP3 here: install sox and libsox-fmt-mp3 (tests/run.sh does)");
        let bytes = std::fs::read(&path).expect("read mp3");
        let clip = decode_audio(&bytes, AudioFormat::Mp3).expect("decodes");
        check_mp3_clip(&clip, 24_000, 900, 1_200);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(decode_audio(&[], AudioFormat::Wav), Err(DecodeError::Empty)));
        let garbage: Vec<u8> = (0..2_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        assert!(decode_audio(&garbage, AudioFormat::Wav).is_err());
        assert!(decode_audio(&garbage, AudioFormat::Mp3).is_err());
        assert!(decode_audio(b"{\"error\":\"quota exceeded\"}", AudioFormat::Mp3).is_err());
        // A WAV header that stops right after `RIFF....WAVE`.
        let wav = wav_bytes(&tone(100, 16_000), 16_000);
        assert!(decode_audio(&wav[..12], AudioFormat::Wav).is_err());
        // A header whose data chunk is cut short still gives the samples that are there, or an error.
        if let Ok(clip) = decode_audio(&wav[..100], AudioFormat::Wav) {
            assert!(clip.samples.len() <= 28);
        }
    }

    const EMBEDDED_MP3: &str = "//NIxAAaKK6ABVlIABbQDl3y5ZcsuWXjQfRXUHLuAAIxhAgBP8y2TjpOmc41TaQM44zCjGCLQIoLEa5DgbFYJgmCYbFaNuEECBAg\
        YOLB8Hz+CG7l+kMcBv0hjgN/DHT7soCYPvh8EDmAz/d0/5cHwf3f/pLg+ikEIIIGBQIAtJIb//wKCIg+3f3JMQOTnHgC//NIxBoj\
        83akV5ugAh8dIwmAjh846AuPBsZDIoGWkgiPkQAyWIBoMXRHQauDVw5P+LlFak0OcOd/5DRcouUmhzhzv/yZIqRUyIsRYx//y6XT\
        IvF5EumKv//y8XjEul1IvJLRRV///+RYnjEumqi8ktFqS/////9WjpLRRUkktExSSMr///T+MAPADDAFwCYZ//NIxA0ZmH4cAd94\
        AAAcOALDAgQJowNcHAMIpApDCKgz8xZA4FOL8LZj4yTvAyk8rkMcKFfzEtiKcwFsPrMH2AzzAgAFMRgHBgFYAQXaEAAWCuQ1Wzf/\
        p/J////6f/////p////9Ff//+VKCmFgxkA2ZojmbtxoVWYDKCOGBeBFpg6YysZTp/YGsmkJRgwgP//NIxCkU+H4kAN/6ZAmao4HR\
        mjmh6bmd4kGKAKmD4ABgIpnN5EJTW5///////7P/////s////9D///iaQgKDxoZEROYwxGp1pgTgJQYI+EcmE4DHxmH/pEbOkQvG\
        GhhcpuS6Z1p/Ro2phm6IpiMCACDMIAhDdQRyIfpP//6v///9X/////1V/+/7RyQQIC8w//NIxFgTmHokAN/6ZNLjUSYFkp94iYL0\
        AhGFKgP5i0wHcbp6HwH7fA6hjPYUCYPyGkmBuEvRgIIbIBAOMK3BErISRCDUoaY58m7/+j8h////o/////+j////0v//+UpDGEBZ\
        kI4ZyiGgNJqs8YEECEmB3hBBhHAvyZjX4vm01D5ZhB4MwZOGKcv/YZ+LgZxC//NIxIwVuH4YAN/0aMmJoOGDgChAHJ8vfH5VS9//\
        /////9v/////2////+lMQU1FMy4xMDCqqqqqqqqqqqqqqqqqqqqqqqqqqv//+ULHDggOGgSSGDrJm04YDiCGmBpBAxg5ot6ZIBw5\
        ml8j1JhQwUMbCLcc63WaAHWZlBQYfgGEBQJAOmout24xn///X/////NIxLgVAH4kAN/6ZP6//////rp/JZy44AgABDAFABIwBQAY\
        MAbAezAxAEYwEcBrMCtBczBywF0wjYM0MTmMvDiGD9M+Ls9NMi1ElzBSRDUxPUjHMABEJTCEwMkwGkA5MAWAUDAOAAhBRh74HAaK\
        KUpScnbtr3z4PlAQBASHBOD44H1Ag4SHBOD7wfggGCgY//NIxMoTYHooAN/6ZC4PvB+CDigYWD8H4gcUOQ/B/lDnD+c/9H5mz///\
        /RUBDBkQCARBMAAwWBgwYBYwCBkwcCPWQcChgqEZhkJ5g2JlWqYwkKdkqgLEsY/HHhs4kgMXCw4HBIkY2OGOjn/otIXEZo1sLAZg\
        QCYABqVa//Qfb+AGuTiKyEppK7Vhf//+ljeU//NIxP8mmK4cAV9gAP4ZtKXcsM+rOWc////wJhSP3Ty93JU/z/TMZjNb////6SWO\
        /G5e7kYljvxqNVaWlrU1Nj//////G5e7kYljvxuXu5GJY78ZjNaVU1Wlpa1NTY////////09uWUliX09ukpLFPT26Slpcqa1sFRE\
        PDX+GAfAgYB8CBgHwIGP12LVTEFN//NIxOc40saAX53YAEUzLjEwMFVMQU1FMy4xMDBVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV\
        VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV\
        VVVVVVVVVVVVVVVVVVVV//NIxHwAAANIAcAAAFVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV\
        VVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVVV\
        VVVVVVVVVVVV";
}
