//! Decoding a provider's audio *as it arrives*: the bytes of a streamed answer go in piece by
//! piece, [`AudioChunk`]s come out as soon as they are whole.
//!
//! - WAV (16-bit PCM, any channel count): the header is read once, then every byte of the `data`
//!   chunk becomes PCM at once (streaming servers leave the sizes unknown; they are ignored).
//! - Raw PCM (16-bit little-endian mono at a known rate): passed through.
//! - Ogg Opus: pages are demultiplexed (the `ogg` crate) and each Opus packet comes out as it is,
//!   with its duration and the stream's rate from `OpusHead`, so the speaker can send it without
//!   decoding when it matches the downlink.
//! - MP3: split into MPEG audio frames as they complete (an ID3v2 tag and the Xing/Info frame are
//!   skipped), each frame decoded by symphonia's MP3 decoder (which keeps the bit reservoir
//!   between frames), so PCM comes out while the answer is still arriving.
//! - Anything else (WAV with other sample formats, content announced as MP3 that does not start
//!   like MP3): kept whole and decoded at the end.
//!
//! The content decides, not the format asked for: `RIFF` is WAV, `OggS` is Ogg, `ID3` or an
//! MPEG sync is MP3 (a bare sync only when raw PCM was not asked for: PCM can start with those
//! bytes). The bytes kept are bounded by [`MAX_BUFFERED`].

use bytes::Bytes;
use ogg::reading::{BasePacketReader, PageParser};

use super::AudioClip;
use super::decode::{AudioFormat, DecodeError, decode_audio};

/// Most bytes a decoder keeps before it can give them out (a header, a page, or a whole MP3).
pub const MAX_BUFFERED: usize = 16 * 1024 * 1024;

/// A piece of a streamed answer's audio.
#[derive(Debug, Clone, PartialEq)]
pub enum AudioChunk {
    /// Mono 16-bit PCM at `sample_rate`.
    Pcm {
        /// The samples.
        samples: Vec<i16>,
        /// Samples per second.
        sample_rate: u32,
    },
    /// One Opus packet (mono) of an Ogg Opus stream.
    Opus {
        /// The packet.
        packet: Bytes,
        /// The stream's rate (`OpusHead` input sample rate; 48 000 when it says 0).
        sample_rate: u32,
        /// The packet's duration in 48 kHz samples (from its TOC byte).
        samples_48k: u32,
    },
}

impl AudioChunk {
    /// Its duration in milliseconds.
    pub fn duration_ms(&self) -> u64 {
        match self {
            Self::Pcm { samples, sample_rate } => samples.len() as u64 * 1000 / u64::from((*sample_rate).max(1)),
            Self::Opus { samples_48k, .. } => u64::from(*samples_48k) / 48,
        }
    }
}

/// Why the streamed audio cannot be decoded (the pieces before it were fine).
pub type ChunkError = DecodeError;

/// What the decoder is reading.
enum Mode {
    /// The first bytes decide what the content is.
    Sniff { hint: AudioFormat, buf: Vec<u8> },
    /// A WAV header, until the `data` chunk starts.
    WavHeader { buf: Vec<u8> },
    /// The `data` chunk of a 16-bit PCM WAV.
    WavData { sample_rate: u32, channels: usize, carry: Vec<u8> },
    /// Raw 16-bit mono PCM.
    Pcm { sample_rate: u32, carry: Vec<u8> },
    /// An Ogg stream.
    Ogg(Box<OggState>),
    /// An MP3 stream, frame by frame.
    Mp3(Box<Mp3State>),
    /// Kept whole, decoded at the end.
    Whole { hint: AudioFormat, buf: Vec<u8> },
}

/// The state of an Ogg Opus stream.
struct OggState {
    buf: Vec<u8>,
    reader: BasePacketReader,
    /// `OpusHead`: the input rate (None until read).
    rate: Option<u32>,
    /// Packets seen (the first two are the headers).
    packets: u64,
}

/// Turns a streamed answer's bytes into [`AudioChunk`]s; see the module documentation.
pub struct ChunkDecoder {
    mode: Mode,
}

impl ChunkDecoder {
    /// A decoder for an answer asked for in `hint`.
    pub fn new(hint: AudioFormat) -> Self {
        Self { mode: Mode::Sniff { hint, buf: Vec::new() } }
    }

    /// Takes the next bytes; returns the chunks they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<AudioChunk>, ChunkError> {
        let mut out = Vec::new();
        self.feed(bytes, &mut out)?;
        Ok(out)
    }

    /// The end of the answer: the chunks still held (a whole MP3 is decoded here).
    pub fn finish(self) -> Result<Vec<AudioChunk>, ChunkError> {
        match self.mode {
            Mode::Sniff { hint, buf } | Mode::Whole { hint, buf } => {
                if buf.is_empty() {
                    return Ok(Vec::new());
                }
                let AudioClip { samples, sample_rate } = decode_audio(&buf, hint)?;
                Ok(vec![AudioChunk::Pcm { samples, sample_rate }])
            }
            Mode::WavHeader { buf } => {
                Err(DecodeError::Unreadable { format: "wav", message: format!("no data chunk in {} bytes", buf.len()) })
            }
            Mode::WavData { .. } | Mode::Pcm { .. } | Mode::Ogg(_) => Ok(Vec::new()),
            Mode::Mp3(state) => state.finish(),
        }
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<AudioChunk>) -> Result<(), ChunkError> {
        match &mut self.mode {
            Mode::Sniff { hint, buf } => {
                buf.extend_from_slice(bytes);
                if buf.len() < 4 {
                    return Ok(());
                }
                let (hint, buf) = (*hint, std::mem::take(buf));
                self.mode = if buf.starts_with(b"RIFF") {
                    Mode::WavHeader { buf: Vec::new() }
                } else if buf.starts_with(b"OggS") {
                    Mode::Ogg(Box::new(OggState {
                        buf: Vec::new(),
                        reader: BasePacketReader::new(),
                        rate: None,
                        packets: 0,
                    }))
                } else if buf.starts_with(b"ID3")
                    || (buf[0] == 0xFF && buf[1] & 0xE0 == 0xE0 && !matches!(hint, AudioFormat::Pcm { .. }))
                {
                    Mode::Mp3(Box::new(Mp3State::new()?))
                } else if let AudioFormat::Pcm { sample_rate } = hint {
                    Mode::Pcm { sample_rate, carry: Vec::new() }
                } else if hint == AudioFormat::Opus {
                    return Err(DecodeError::Unreadable { format: "opus", message: "not an Ogg stream".into() });
                } else {
                    Mode::Whole { hint, buf: Vec::new() }
                };
                self.feed(&buf, out)
            }
            Mode::WavHeader { buf } => {
                buf.extend_from_slice(bytes);
                bound(buf.len())?;
                let Some(header) = parse_wav_header(buf)? else { return Ok(()) };
                let mut whole = std::mem::take(buf);
                let rest = whole.split_off(header.data_start);
                if header.bits == 16 && header.format == 1 {
                    self.mode =
                        Mode::WavData { sample_rate: header.sample_rate, channels: header.channels, carry: Vec::new() };
                    self.feed(&rest, out)
                } else {
                    // Float, 8- or 24-bit: decoded whole at the end.
                    whole.extend_from_slice(&rest);
                    self.mode = Mode::Whole { hint: AudioFormat::Wav, buf: whole };
                    Ok(())
                }
            }
            Mode::WavData { sample_rate, channels, carry } => {
                let frame = 2 * *channels;
                carry.extend_from_slice(bytes);
                let whole = carry.len() / frame * frame;
                if whole > 0 {
                    let count = *channels as i32;
                    let samples = carry[..whole]
                        .chunks_exact(frame)
                        .map(|bytes| {
                            let sum: i32 =
                                bytes.chunks_exact(2).map(|s| i32::from(i16::from_le_bytes([s[0], s[1]]))).sum();
                            // The mean of i16 values always fits an i16.
                            (sum / count) as i16
                        })
                        .collect();
                    carry.drain(..whole);
                    out.push(AudioChunk::Pcm { samples, sample_rate: *sample_rate });
                }
                Ok(())
            }
            Mode::Pcm { sample_rate, carry } => {
                carry.extend_from_slice(bytes);
                let whole = carry.len() / 2 * 2;
                if whole > 0 {
                    let samples = carry[..whole].chunks_exact(2).map(|s| i16::from_le_bytes([s[0], s[1]])).collect();
                    carry.drain(..whole);
                    out.push(AudioChunk::Pcm { samples, sample_rate: *sample_rate });
                }
                Ok(())
            }
            Mode::Ogg(state) => state.feed(bytes, out),
            Mode::Mp3(state) => state.feed(bytes, out),
            Mode::Whole { buf, .. } => {
                buf.extend_from_slice(bytes);
                bound(buf.len())
            }
        }
    }
}

fn bound(len: usize) -> Result<(), ChunkError> {
    if len > MAX_BUFFERED {
        return Err(DecodeError::Unreadable { format: "audio", message: format!("over {MAX_BUFFERED} bytes held") });
    }
    Ok(())
}

/// What a WAV header says.
struct WavHeader {
    format: u16,
    channels: usize,
    sample_rate: u32,
    bits: u16,
    /// Where the `data` chunk's bytes start.
    data_start: usize,
}

/// Reads a WAV header from the start of `buf`: `None` while the `data` chunk has not started.
fn parse_wav_header(buf: &[u8]) -> Result<Option<WavHeader>, ChunkError> {
    let bad = |message: &str| DecodeError::Unreadable { format: "wav", message: message.into() };
    if buf.len() < 12 {
        return Ok(None);
    }
    if !buf.starts_with(b"RIFF") || &buf[8..12] != b"WAVE" {
        return Err(bad("not a RIFF/WAVE header"));
    }
    let u16_at = |at: usize| buf.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| buf.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let mut at = 12;
    let mut fmt: Option<(u16, usize, u32, u16)> = None;
    loop {
        let (Some(id), Some(size)) = (buf.get(at..at + 4), u32_at(at + 4)) else { return Ok(None) };
        let body = at + 8;
        if id == b"data" {
            let (format, channels, sample_rate, bits) = fmt.ok_or_else(|| bad("the data chunk comes before fmt"))?;
            if channels == 0 || sample_rate == 0 {
                return Err(bad("no channels or no sample rate"));
            }
            return Ok(Some(WavHeader { format, channels, sample_rate, bits, data_start: body }));
        }
        let size = size as usize;
        if id == b"fmt " {
            let (Some(format), Some(channels), Some(rate), Some(bits)) =
                (u16_at(body), u16_at(body + 2), u32_at(body + 4), u16_at(body + 14))
            else {
                return Ok(None);
            };
            // WAVE_FORMAT_EXTENSIBLE carries PCM as a sub-format: read it as PCM.
            let format = if format == 0xFFFE { 1 } else { format };
            fmt = Some((format, usize::from(channels), rate, bits));
        }
        at = body + size + (size & 1);
        bound(at)?;
    }
}

impl OggState {
    fn feed(&mut self, bytes: &[u8], out: &mut Vec<AudioChunk>) -> Result<(), ChunkError> {
        let bad = |message: String| DecodeError::Unreadable { format: "ogg", message };
        self.buf.extend_from_slice(bytes);
        bound(self.buf.len())?;
        loop {
            // One page: a 27-byte header, its segment table, then its data.
            let Some(header) = self.buf.get(..27) else { return Ok(()) };
            let mut header_buf = [0u8; 27];
            header_buf.copy_from_slice(header);
            let segments = usize::from(header_buf[26]);
            let Some(table) = self.buf.get(27..27 + segments) else { return Ok(()) };
            let data_len: usize = table.iter().map(|&s| usize::from(s)).sum();
            let page_len = 27 + segments + data_len;
            if self.buf.len() < page_len {
                return Ok(());
            }
            let (mut parser, _) = PageParser::new(header_buf).map_err(|e| bad(e.to_string()))?;
            parser.parse_segments(table.to_vec());
            let page =
                parser.parse_packet_data(self.buf[27 + segments..page_len].to_vec()).map_err(|e| bad(e.to_string()))?;
            self.buf.drain(..page_len);
            self.reader.push_page(page).map_err(|e| bad(e.to_string()))?;
            while let Some(packet) = self.reader.read_packet() {
                self.packet(packet.data, out)?;
            }
        }
    }

    fn packet(&mut self, data: Vec<u8>, out: &mut Vec<AudioChunk>) -> Result<(), ChunkError> {
        self.packets += 1;
        if self.packets == 1 {
            if !data.starts_with(b"OpusHead") || data.len() < 19 {
                return Err(DecodeError::Unreadable { format: "ogg", message: "not an Ogg Opus stream".into() });
            }
            if data[9] != 1 {
                return Err(DecodeError::Unreadable {
                    format: "ogg",
                    message: format!("{} channels (mono only)", data[9]),
                });
            }
            let rate = u32::from_le_bytes([data[12], data[13], data[14], data[15]]);
            self.rate = Some(if rate == 0 { 48_000 } else { rate });
            return Ok(());
        }
        if data.starts_with(b"OpusTags") {
            return Ok(());
        }
        let (Some(rate), Some(samples_48k)) = (self.rate, opus_packet_samples_48k(&data)) else {
            return Err(DecodeError::Unreadable { format: "ogg", message: "an invalid Opus packet".into() });
        };
        out.push(AudioChunk::Opus { packet: Bytes::from(data), sample_rate: rate, samples_48k });
        Ok(())
    }
}

/// The state of an MP3 stream.
struct Mp3State {
    buf: Vec<u8>,
    /// Bytes of an ID3v2 tag still to skip.
    skip: usize,
    decoder: Box<dyn symphonia::core::codecs::Decoder>,
    /// Frames decoded into audio.
    decoded: u64,
    /// Frames seen (decoded or not).
    frames: u64,
    /// Bytes dropped while looking for a frame (not MP3 at all when nothing else came).
    dropped: usize,
}

/// The length in bytes of the MPEG-1/2/2.5 Layer III frame whose 4-byte header starts `header`;
/// `None` when it is not a Layer III header (free bit rate included, which no decoder here reads).
fn mp3_frame_len(header: &[u8]) -> Option<usize> {
    const MPEG1: [u32; 15] = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320];
    const MPEG2: [u32; 15] = [0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160];
    let &[b0, b1, b2, _] = header.get(..4)? else { return None };
    if b0 != 0xFF || b1 & 0xE0 != 0xE0 || (b1 >> 1) & 3 != 0b01 {
        return None;
    }
    let version = (b1 >> 3) & 3; // 0: MPEG-2.5, 2: MPEG-2, 3: MPEG-1
    let rate_index = usize::from((b2 >> 2) & 3);
    let bitrate_index = usize::from(b2 >> 4);
    if version == 1 || rate_index == 3 || bitrate_index == 0 || bitrate_index == 15 {
        return None;
    }
    let base_rate = [44_100, 48_000, 32_000][rate_index];
    let (sample_rate, kbps, factor) = match version {
        3 => (base_rate, MPEG1[bitrate_index], 144),
        2 => (base_rate / 2, MPEG2[bitrate_index], 72),
        _ => (base_rate / 4, MPEG2[bitrate_index], 72),
    };
    Some((factor * kbps * 1000 / sample_rate) as usize + usize::from((b2 >> 1) & 1))
}

/// Whether a frame carries the Xing/Info/VBRI header of an encoder instead of audio.
fn is_info_frame(frame: &[u8]) -> bool {
    let mono = frame[3] >> 6 == 3;
    let mpeg1 = (frame[1] >> 3) & 3 == 3;
    let side_info = match (mpeg1, mono) {
        (true, false) => 32,
        (true, true) | (false, false) => 17,
        (false, true) => 9,
    };
    let at = |offset: usize, tag: &[u8]| frame.get(offset..offset + tag.len()) == Some(tag);
    at(4 + side_info, b"Xing") || at(4 + side_info, b"Info") || at(36, b"VBRI")
}

impl Mp3State {
    fn new() -> Result<Self, ChunkError> {
        use symphonia::core::codecs::{CODEC_TYPE_MP3, CodecParameters, DecoderOptions};
        let mut params = CodecParameters::new();
        params.for_codec(CODEC_TYPE_MP3);
        let decoder = symphonia::default::get_codecs()
            .make(&params, &DecoderOptions::default())
            .map_err(|e| DecodeError::Unreadable { format: "mp3", message: e.to_string() })?;
        Ok(Self { buf: Vec::new(), skip: 0, decoder, decoded: 0, frames: 0, dropped: 0 })
    }

    fn feed(&mut self, bytes: &[u8], out: &mut Vec<AudioChunk>) -> Result<(), ChunkError> {
        self.buf.extend_from_slice(bytes);
        bound(self.buf.len())?;
        let mut pcm: Vec<i16> = Vec::new();
        let mut rate = 0;
        let mut start = 0;
        loop {
            if self.skip > 0 {
                let n = self.skip.min(self.buf.len() - start);
                self.skip -= n;
                start += n;
                if self.skip > 0 {
                    break;
                }
            }
            let rest = &self.buf[start..];
            if rest.starts_with(b"ID3") {
                let Some(size) = rest.get(6..10) else { break };
                // A syncsafe size (7 bits a byte), plus the 10-byte header and an optional footer.
                let size = size.iter().fold(0usize, |n, &b| (n << 7) | usize::from(b & 0x7F));
                self.skip = 10 + size + if rest[5] & 0x10 != 0 { 10 } else { 0 };
                continue;
            }
            if rest.len() < 4 {
                break;
            }
            let Some(len) = mp3_frame_len(rest) else {
                // Not a frame: look for the next sync.
                let next = rest[1..].iter().position(|&b| b == 0xFF).map_or(rest.len(), |p| p + 1);
                self.dropped += next;
                start += next;
                continue;
            };
            if rest.len() < len {
                break;
            }
            let frame = rest[..len].to_vec();
            self.frames += 1;
            if !(self.frames == 1 && is_info_frame(&frame)) {
                self.decode_frame(&frame, &mut pcm, &mut rate, out);
            }
            start += len;
        }
        self.buf.drain(..start);
        if !pcm.is_empty() {
            out.push(AudioChunk::Pcm { samples: pcm, sample_rate: rate });
        }
        Ok(())
    }

    /// Decodes one frame onto `pcm` (mono); a frame at another rate flushes what came before.
    fn decode_frame(&mut self, frame: &[u8], pcm: &mut Vec<i16>, rate: &mut u32, out: &mut Vec<AudioChunk>) {
        use symphonia::core::audio::SampleBuffer;
        use symphonia::core::formats::Packet;
        let packet = Packet::new_from_slice(0, 0, 0, frame);
        let decoder = &mut self.decoder;
        let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let decoded = decoder.decode(&packet).ok()?;
            let spec = *decoded.spec();
            if decoded.frames() == 0 {
                return None;
            }
            let mut buf = SampleBuffer::<i16>::new(decoded.capacity() as u64, spec);
            buf.copy_interleaved_ref(decoded);
            Some((buf, spec.rate, spec.channels.count().max(1)))
        }));
        let Ok(Some((buf, frame_rate, channels))) = decoded else {
            // A corrupt frame (or one whose bit reservoir came before the stream): skipped, as
            // players do. After a panic the decoder starts afresh.
            if decoded.is_err() {
                self.decoder.reset();
            }
            return;
        };
        self.decoded += 1;
        if *rate != frame_rate && !pcm.is_empty() {
            out.push(AudioChunk::Pcm { samples: std::mem::take(pcm), sample_rate: *rate });
        }
        *rate = frame_rate;
        let count = channels as i32;
        pcm.extend(buf.samples().chunks_exact(channels).map(|frame| {
            // The mean of i16 values always fits an i16.
            (frame.iter().map(|&s| i32::from(s)).sum::<i32>() / count) as i16
        }));
    }

    /// The end: an error when nothing in the stream was MP3 audio.
    fn finish(self) -> Result<Vec<AudioChunk>, ChunkError> {
        if self.decoded == 0 {
            let message = format!("no MP3 frame decoded ({} frames, {} bytes skipped)", self.frames, self.dropped);
            return Err(DecodeError::Unreadable { format: "mp3", message });
        }
        Ok(Vec::new())
    }
}

/// An Opus packet's duration in 48 kHz samples, from its TOC byte (RFC 6716 §3.1); `None` for
/// an empty or malformed packet.
pub fn opus_packet_samples_48k(packet: &[u8]) -> Option<u32> {
    let toc = *packet.first()?;
    let config = toc >> 3;
    let frame: u32 = match config {
        // SILK: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][usize::from(config % 2)],
        // CELT: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames = match toc & 3 {
        0 => 1,
        1 | 2 => 2,
        _ => u32::from(*packet.get(1)? & 0x3F),
    };
    (frames > 0).then_some(frame * frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audio::decode::{decode_audio, wav_bytes};
    use crate::audio::opus::{MAX_PACKET, OpusEncoder};

    /// Feeds `bytes` in pieces of `step` and collects every chunk.
    fn decode_in_pieces(hint: AudioFormat, bytes: &[u8], step: usize) -> Vec<AudioChunk> {
        let mut decoder = ChunkDecoder::new(hint);
        let mut chunks = Vec::new();
        for piece in bytes.chunks(step) {
            chunks.extend(decoder.push(piece).expect("push"));
        }
        chunks.extend(decoder.finish().expect("finish"));
        chunks
    }

    fn pcm_of(chunks: &[AudioChunk]) -> (Vec<i16>, u32) {
        let mut out = Vec::new();
        let mut rate = 0;
        for chunk in chunks {
            if let AudioChunk::Pcm { samples, sample_rate } = chunk {
                out.extend_from_slice(samples);
                rate = *sample_rate;
            }
        }
        (out, rate)
    }

    #[test]
    fn a_wav_streams_piece_by_piece() {
        let samples: Vec<i16> = (0..4800).map(|i| (i * 7 % 3000) as i16 - 1500).collect();
        let mut wav = wav_bytes(&samples, 24_000);
        // A streaming server does not know the sizes.
        wav[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        wav[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        for step in [1, 3, 100, 4096] {
            let chunks = decode_in_pieces(AudioFormat::Wav, &wav, step);
            assert_eq!(pcm_of(&chunks), (samples.clone(), 24_000), "pieces of {step}");
        }
        // Audio comes out before the end: the first chunk after the header and 100 bytes.
        let mut decoder = ChunkDecoder::new(AudioFormat::Wav);
        assert!(decoder.push(&wav[..44]).unwrap().is_empty());
        assert_eq!(pcm_of(&decoder.push(&wav[44..144]).unwrap()).0.len(), 50);
    }

    #[test]
    fn raw_pcm_and_mp3_and_bad_input() {
        let samples: Vec<i16> = (0..1000).map(|i| i as i16).collect();
        let raw: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let chunks = decode_in_pieces(AudioFormat::Pcm { sample_rate: 24_000 }, &raw, 7);
        assert_eq!(pcm_of(&chunks), (samples, 24_000));
        let mut decoder = ChunkDecoder::new(AudioFormat::Wav);
        assert!(decoder.push(b"RIFF\0\0\0\0NOPE").is_err(), "a broken header is an error");
        assert!(ChunkDecoder::new(AudioFormat::Wav).finish().unwrap().is_empty(), "no bytes, no chunks");
        let mut decoder = ChunkDecoder::new(AudioFormat::Wav);
        decoder.push(&wav_bytes(&[0; 10], 16_000)[..30]).unwrap();
        assert!(decoder.finish().is_err(), "cut inside the header");
    }

    /// An Ogg Opus stream of `packets` 60 ms packets at 24 kHz, as the test mock writes it.
    fn ogg_opus(packets: usize) -> Vec<u8> {
        let mut encoder = OpusEncoder::new(24_000, 60, 24_000, 0).unwrap();
        let mut out = vec![0u8; MAX_PACKET];
        let mut writer = ogg::writing::PacketWriter::new(Vec::new());
        let mut head = b"OpusHead".to_vec();
        head.extend_from_slice(&[1, 1, 0x38, 0x01]);
        head.extend_from_slice(&24_000u32.to_le_bytes());
        head.extend_from_slice(&[0, 0, 0]);
        writer.write_packet(head, 7, ogg::writing::PacketWriteEndInfo::EndPage, 0).unwrap();
        writer
            .write_packet(b"OpusTags\0\0\0\0\0\0\0\0".to_vec(), 7, ogg::writing::PacketWriteEndInfo::EndPage, 0)
            .unwrap();
        for i in 0..packets {
            let pcm: Vec<i16> =
                (0..1440).map(|j| ((i * 1440 + j) as f32 * 0.05).sin().mul_add(8000.0, 0.0) as i16).collect();
            let n = encoder.encode(&pcm, &mut out).unwrap();
            let end = if i + 1 == packets {
                ogg::writing::PacketWriteEndInfo::EndStream
            } else {
                ogg::writing::PacketWriteEndInfo::NormalPacket
            };
            writer.write_packet(out[..n].to_vec(), 7, end, (i as u64 + 1) * 2880).unwrap();
        }
        writer.into_inner()
    }

    #[test]
    fn ogg_opus_packets_come_out_undecoded_with_their_duration() {
        let ogg = ogg_opus(20);
        for step in [5, 200, 65_536] {
            let chunks = decode_in_pieces(AudioFormat::Wav, &ogg, step);
            assert_eq!(chunks.len(), 20, "pieces of {step}");
            for chunk in &chunks {
                let AudioChunk::Opus { sample_rate, samples_48k, .. } = chunk else { panic!("{chunk:?}") };
                assert_eq!((*sample_rate, *samples_48k), (24_000, 2880));
                assert_eq!(chunk.duration_ms(), 60);
            }
        }
        assert!(decode_in_pieces(AudioFormat::Wav, &ogg[..ogg.len() / 2], 100).len() < 20);
    }

    /// `seconds` of a 440 Hz tone as MP3 (sox with its MP3 format, as tests/run.sh installs).
    fn sox_mp3(rate: u32, channels: u32, kbps: u32, seconds: f32) -> Vec<u8> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tone.mp3");
        let made = std::process::Command::new("sox")
            .args(["-n", "-r", &rate.to_string(), "-c", &channels.to_string(), "-C", &kbps.to_string()])
            .arg(&path)
            .args(["synth", &seconds.to_string(), "sine", "440", "vol", "0.5"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(made, "sox cannot write MP3 here: install sox and libsox-fmt-mp3 (tests/run.sh does)");
        std::fs::read(&path).expect("read mp3")
    }

    #[test]
    fn mp3_streams_frame_by_frame() {
        for (rate, channels, kbps) in [(24_000, 1, 48), (44_100, 2, 128), (16_000, 1, 32)] {
            let mp3 = sox_mp3(rate, channels, kbps, 1.0);
            let whole = decode_audio(&mp3, AudioFormat::Mp3).expect("decodes whole");
            for step in [1, 100, 4096, mp3.len()] {
                let (samples, got_rate) = pcm_of(&decode_in_pieces(AudioFormat::Wav, &mp3, step));
                assert_eq!(got_rate, rate, "pieces of {step}");
                let ms = samples.len() as u64 * 1000 / u64::from(rate);
                assert!((950..1_150).contains(&ms), "{ms} ms in pieces of {step}");
                assert!(
                    samples.len().abs_diff(whole.samples.len()) <= 1152 * 2,
                    "{} vs {}",
                    samples.len(),
                    whole.samples.len()
                );
                assert!(samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or(0) > 4_000, "loud");
            }
            // Audio comes out before the end: the first half gives about half the tone.
            let mut decoder = ChunkDecoder::new(AudioFormat::Mp3);
            let (first, _) = pcm_of(&decoder.push(&mp3[..mp3.len() / 2]).expect("push"));
            let ms = first.len() as u64 * 1000 / u64::from(rate);
            assert!((300..600).contains(&ms), "{ms} ms from the first half");
        }
        // An ID3v2 tag in front is skipped, even when it comes a byte at a time, and even with a
        // `pcm` hint (a bare sync with a `pcm` hint is PCM).
        let mp3 = sox_mp3(24_000, 1, 48, 0.5);
        let tag = b"ID3\x03\x00\x00\x00\x00\x00\x0FTIT2\x00\x00\x00\x05\x00\x00\x00test".as_slice();
        let tagged = [tag, &mp3].concat();
        let (samples, rate) = pcm_of(&decode_in_pieces(AudioFormat::Pcm { sample_rate: 16_000 }, &tagged, 1));
        assert_eq!(rate, 24_000);
        assert!(samples.len() > 10_000);
        let pcm_like = [0xFF, 0xFF, 0x10, 0x00];
        assert_eq!(
            pcm_of(&decode_in_pieces(AudioFormat::Pcm { sample_rate: 16_000 }, &pcm_like, 4)),
            (vec![-1, 16], 16_000)
        );
        // A tag and nothing after it, or garbage after a sync, is an error at the end.
        let mut decoder = ChunkDecoder::new(AudioFormat::Mp3);
        assert!(decoder.push(tag).expect("push").is_empty());
        assert!(decoder.finish().is_err());
        let garbage: Vec<u8> = (0..2_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let mut decoder = ChunkDecoder::new(AudioFormat::Mp3);
        let _ = decoder.push(&[&[0xFF, 0xFB][..], &garbage].concat());
        assert!(decoder.finish().is_err());
        // Cut inside a frame: the frames before it came out.
        let (samples, _) = pcm_of(&decode_in_pieces(AudioFormat::Mp3, &mp3[..mp3.len() - 50], 333));
        assert!(samples.len() > 8_000);
    }

    #[test]
    fn opus_toc_durations() {
        assert_eq!(opus_packet_samples_48k(&[0b0001_1000]), Some(2880)); // SILK 60 ms, one frame
        assert_eq!(opus_packet_samples_48k(&[0b1111_1001]), Some(1920)); // CELT 20 ms, two frames
        assert_eq!(opus_packet_samples_48k(&[0b1111_1011, 3]), Some(2880)); // CELT 20 ms, three frames
        assert_eq!(opus_packet_samples_48k(&[]), None);
        assert_eq!(opus_packet_samples_48k(&[0b1111_1011]), None);
    }
}
