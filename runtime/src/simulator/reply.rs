//! One spoken reply as the device experiences it: the JSON around it, the Opus frames that arrive
//! while the device is Speaking, their decoded PCM and their arrival times.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::SimEvent;
use crate::audio::opus::OpusDecoder;

/// Everything the device received for one reply, from the first event read until `tts stop`.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// The last `stt` text.
    pub stt: Option<String>,
    /// The last `llm` emotion.
    pub emotion: Option<String>,
    /// The `tts sentence_start` texts, in order.
    pub sentences: Vec<String>,
    /// The Opus packets that arrived while Speaking (between `tts start` and `tts stop`), with
    /// their arrival times.
    pub frames: Vec<(Instant, Vec<u8>)>,
    /// Those packets decoded, one after the other, by one decoder at [`Reply::sample_rate`].
    pub pcm: Vec<i16>,
    /// The downlink sample rate from the server hello.
    pub sample_rate: u32,
    /// When `tts start` arrived.
    pub tts_start: Option<Instant>,
    /// When `tts stop` arrived.
    pub tts_stop: Option<Instant>,
    /// Every JSON message received, in order (including `mcp` requests).
    pub json: Vec<Value>,
    /// Audio frames that arrived outside Speaking (before `tts start` or after `tts stop`); the
    /// firmware drops these.
    pub frames_outside_speaking: usize,
    /// Packets the Opus decoder rejected (corrupt, or longer than 120 ms).
    pub decode_errors: usize,
}

impl Reply {
    /// The largest number of frames the device had queued but not yet played at any arrival:
    /// the maximum over the reply of (frames received up to t) − (elapsed since the first frame /
    /// `frame_ms`). This is what the firmware's 40-packet decode queue sees; above 40, packets are
    /// dropped. 0 when no frame arrived.
    pub fn max_frames_ahead(&self, frame_ms: u32) -> f64 {
        let Some((first, _)) = self.frames.first() else {
            return 0.0;
        };
        let frame = Duration::from_millis(u64::from(frame_ms.max(1)));
        self.frames
            .iter()
            .enumerate()
            .map(|(i, (at, _))| {
                (i + 1) as f64 - at.saturating_duration_since(*first).as_secs_f64() / frame.as_secs_f64()
            })
            .fold(0.0, f64::max)
    }

    /// Duration of the decoded audio in milliseconds.
    pub fn audio_ms(&self) -> u64 {
        if self.sample_rate == 0 {
            return 0;
        }
        self.pcm.len() as u64 * 1000 / u64::from(self.sample_rate)
    }

    /// A one-line account of what arrived, for error messages.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for v in &self.json {
            let mut s = v.to_string();
            if s.len() > 200 {
                let cut = (0..=200).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                s.truncate(cut);
                s.push('…');
            }
            parts.push(s);
        }
        parts.push(format!(
            "{} audio frames while speaking, {} outside speaking, {} undecodable",
            self.frames.len(),
            self.frames_outside_speaking,
            self.decode_errors
        ));
        parts.join("; ")
    }
}

/// Builds a [`Reply`] from events, applying the firmware's Speaking rule to audio.
pub(crate) struct ReplyBuilder {
    reply: Reply,
    decoder: OpusDecoder,
    scratch: Vec<i16>,
    speaking: bool,
}

impl ReplyBuilder {
    /// A builder decoding at `sample_rate` (an Opus rate, or an error).
    pub(crate) fn new(sample_rate: u32) -> anyhow::Result<Self> {
        let decoder = OpusDecoder::new(sample_rate).map_err(|e| {
            anyhow::anyhow!(
                "the server hello announced a downlink rate of {sample_rate} Hz, which Opus cannot decode: {e}"
            )
        })?;
        // 120 ms is the longest Opus packet.
        let scratch = vec![0i16; (sample_rate as usize * 120 / 1000).max(1)];
        Ok(Self { reply: Reply { sample_rate, ..Reply::default() }, decoder, scratch, speaking: false })
    }

    /// Takes one event; returns `true` once `tts stop` has arrived.
    pub(crate) fn push(&mut self, at: Instant, event: SimEvent) -> bool {
        match event {
            SimEvent::Json(v) => {
                let done = self.on_json(at, &v);
                self.reply.json.push(v);
                done
            }
            SimEvent::Audio { opus, .. } => {
                if self.speaking {
                    match self.decoder.decode(&opus, &mut self.scratch) {
                        Ok(n) => self.reply.pcm.extend_from_slice(self.scratch.get(..n).unwrap_or_default()),
                        Err(_) => self.reply.decode_errors += 1,
                    }
                    self.reply.frames.push((at, opus));
                } else {
                    self.reply.frames_outside_speaking += 1;
                }
                false
            }
            SimEvent::Closed(_) => false,
        }
    }

    fn on_json(&mut self, at: Instant, v: &Value) -> bool {
        let text = || v.get("text").and_then(Value::as_str).map(str::to_string);
        match v.get("type").and_then(Value::as_str) {
            Some("stt") => self.reply.stt = text().or(self.reply.stt.take()),
            Some("llm") => {
                if let Some(e) = v.get("emotion").and_then(Value::as_str) {
                    self.reply.emotion = Some(e.to_string());
                }
            }
            Some("tts") => match v.get("state").and_then(Value::as_str) {
                Some("start") => {
                    self.speaking = true;
                    self.reply.tts_start.get_or_insert(at);
                }
                Some("sentence_start") => self.reply.sentences.extend(text()),
                Some("stop") => {
                    self.speaking = false;
                    self.reply.tts_stop = Some(at);
                    return true;
                }
                _ => {}
            },
            _ => {}
        }
        false
    }

    /// What has arrived so far.
    pub(crate) fn reply(&self) -> &Reply {
        &self.reply
    }

    /// The finished reply.
    pub(crate) fn finish(self) -> Reply {
        self.reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::opus::{MAX_PACKET, OpusEncoder};
    use serde_json::json;

    fn reply_with_arrivals(ms: &[u64]) -> Reply {
        let t0 = Instant::now();
        Reply {
            frames: ms.iter().map(|&m| (t0 + Duration::from_millis(m), vec![0u8; 3])).collect(),
            sample_rate: 24_000,
            ..Reply::default()
        }
    }

    #[test]
    fn frames_ahead_of_a_paced_stream() {
        // Five pre-buffered frames at once, then one per 60 ms: five ahead at most.
        let mut arrivals = vec![0, 0, 0, 0, 0];
        arrivals.extend((1..20).map(|i| i * 60));
        let r = reply_with_arrivals(&arrivals);
        assert!((r.max_frames_ahead(60) - 5.0).abs() < 1e-9, "{}", r.max_frames_ahead(60));
    }

    #[test]
    fn frames_ahead_of_a_burst_and_of_nothing() {
        // 50 frames in one burst overflow the device's 40-packet queue.
        let r = reply_with_arrivals(&[0; 50]);
        assert_eq!(r.max_frames_ahead(60), 50.0);
        // A late, slow stream is never ahead by more than the first frame.
        let r = reply_with_arrivals(&[0, 120, 240, 360]);
        assert_eq!(r.max_frames_ahead(60), 1.0);
        assert_eq!(Reply::default().max_frames_ahead(60), 0.0);
    }

    #[test]
    fn builder_keeps_only_speaking_audio_and_decodes_it() {
        let mut enc = OpusEncoder::new(24_000, 60, 24_000, 0).unwrap();
        let tone: Vec<i16> = (0..1440)
            .map(|i| (8000.0 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 24_000.0).sin()) as i16)
            .collect();
        let mut buf = vec![0u8; MAX_PACKET];
        let n = enc.encode(&tone, &mut buf).unwrap();
        let packet = buf[..n].to_vec();

        let mut b = ReplyBuilder::new(24_000).unwrap();
        let t = Instant::now();
        let audio = || SimEvent::Audio { opus: packet.clone(), timestamp: 0 };
        assert!(!b.push(t, audio()), "audio before tts start");
        assert!(!b.push(t, SimEvent::Json(json!({"type":"stt","text":"hello"}))));
        assert!(!b.push(t, SimEvent::Json(json!({"type":"llm","text":"😊","emotion":"happy"}))));
        assert!(!b.push(t, SimEvent::Json(json!({"type":"tts","state":"start"}))));
        assert!(!b.push(t, SimEvent::Json(json!({"type":"tts","state":"sentence_start","text":"Hi there."}))));
        for _ in 0..3 {
            assert!(!b.push(t, audio()));
        }
        assert!(!b.push(t, SimEvent::Audio { opus: vec![0xff; 40], timestamp: 0 }));
        assert!(b.push(t, SimEvent::Json(json!({"type":"tts","state":"stop"}))));
        let r = b.finish();
        assert_eq!(r.stt.as_deref(), Some("hello"));
        assert_eq!(r.emotion.as_deref(), Some("happy"));
        assert_eq!(r.sentences, vec!["Hi there.".to_string()]);
        assert_eq!(r.frames.len(), 4);
        assert_eq!(r.frames_outside_speaking, 1);
        assert_eq!(r.decode_errors, 1);
        assert_eq!(r.pcm.len(), 3 * 1440);
        assert_eq!(r.audio_ms(), 180);
        assert_eq!(r.json.len(), 5);
        assert!(r.tts_start.is_some() && r.tts_stop.is_some());
        assert!(r.summary().contains("4 audio frames while speaking"));
    }

    #[test]
    fn builder_refuses_a_rate_opus_cannot_decode() {
        assert!(ReplyBuilder::new(22_050).is_err());
    }
}
