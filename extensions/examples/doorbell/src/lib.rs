//! The `doorbell` example extension (world `xiaozhi:extension/player-extension@0.2.0`, the SDK
//! with its `player` feature): one tool, `ring_doorbell`, whose effects show what a 0.2 tool can
//! do besides answering text: turn the device's own speaker up (a device MCP tool), play a chime
//! the extension computes itself (an audio stream, pulled chunk by chunk through `media.read`),
//! and say who is at the door.

use xiaozhi_sdk::{
    Arguments, AudioSource, CallContext, DeviceToolCall, Effect, ExtensionError, PcmChunk, PlayAudio, Player, Tool,
};

/// Samples per second of the chime.
pub const RATE: u32 = 16_000;
/// Audio in one chunk, ms.
pub const CHUNK_MS: u32 = 200;

/// The tool.
pub struct Doorbell;

impl Tool for Doorbell {
    const NAME: &'static str = "ring_doorbell";
    const DESCRIPTION: &'static str = "Rings the doorbell chime on the device and says who is at the door.";
    const PARAMETERS: &'static str =
        r#"{"type":"object","properties":{"who":{"type":"string","description":"Who is at the door."}}}"#;

    fn call(arguments: &Arguments, _context: &CallContext) -> Result<Vec<Effect>, ExtensionError> {
        let who = arguments.str("who").unwrap_or("Someone");
        Ok(vec![
            Effect::CallDeviceTool(DeviceToolCall {
                name: "self.audio_speaker.set_volume".into(),
                arguments_json: r#"{"volume":80}"#.into(),
            }),
            Effect::Play(PlayAudio {
                source: AudioSource::Stream("chime:880:1200".into()),
                title: Some("叮咚".into()),
            }),
            Effect::Speak(format!("{who} is at the door.")),
        ])
    }
}

/// A stream token `chime:<hz>:<ms>`: its pitch and length.
pub fn parse(token: &str) -> Option<(u32, u32)> {
    let mut parts = token.strip_prefix("chime:")?.split(':');
    let hz = parts.next()?.parse().ok().filter(|hz| (100..=4000).contains(hz))?;
    let ms = parts.next()?.parse().ok().filter(|ms| (1..=10_000).contains(ms))?;
    Some((hz, ms))
}

/// Chunk `index` of a chime: stereo 16 kHz, fading out; `None` past its end.
pub fn chunk(hz: u32, ms: u32, index: u32) -> Option<PcmChunk> {
    let total = u64::from(RATE) * u64::from(ms) / 1000;
    let start = u64::from(index) * u64::from(RATE * CHUNK_MS / 1000);
    if start >= total {
        return None;
    }
    let end = (start + u64::from(RATE * CHUNK_MS / 1000)).min(total);
    let mut samples = Vec::with_capacity(((end - start) * 2) as usize);
    for n in start..end {
        let t = n as f32 / RATE as f32;
        let fade = 1.0 - n as f32 / total as f32;
        let value = ((t * hz as f32 * std::f32::consts::TAU).sin() * 9_000.0 * fade) as i16;
        samples.extend([value, value]);
    }
    Some(PcmChunk { samples, sample_rate: RATE, channels: 2 })
}

/// The stream of the chime.
pub struct Chime;

impl Player for Chime {
    fn read(token: &str, index: u32) -> Result<Option<PcmChunk>, ExtensionError> {
        let (hz, ms) = parse(token).ok_or_else(|| ExtensionError::NotFound(format!("no stream {token:?}")))?;
        Ok(chunk(hz, ms, index))
    }
}

xiaozhi_sdk::export_player!(Chime; Doorbell);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chime_streams_in_chunks_and_ends() {
        assert_eq!(parse("chime:880:1200"), Some((880, 1200)));
        assert_eq!(parse("chime:5:1200"), None);
        let frames: usize = (0..).map_while(|i| chunk(880, 1200, i)).map(|c| c.samples.len() / 2).sum();
        assert_eq!(frames, 16_000 * 1200 / 1000);
        assert!(chunk(880, 1200, 6).is_none());
        assert!(matches!(Chime::read("bell", 0), Err(ExtensionError::NotFound(_))));
    }
}
