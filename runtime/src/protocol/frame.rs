//! Binary audio frames of the device protocol, versions 1, 2 and 3 (device-protocol.md §1.6).
//!
//! - **v1**: the whole WebSocket binary frame is one raw Opus packet.
//! - **v2**: a 16-byte big-endian header `version u16 | type u16 | reserved u32 | timestamp u32 |
//!   payload_size u32`, then the payload. Only `type`, `timestamp` (offset 8) and `payload_size`
//!   (offset 12) are read: the MQTT gateway writes zeros in bytes 0–7.
//! - **v3**: a 4-byte header `type u8 | reserved u8 | payload_size u16 BE`, then the payload.
//!
//! Decoding borrows the payload from the input and never allocates. The receiver of a frame cuts
//! the payload by `payload_size`, not by the frame length, so bytes after the declared payload are
//! ignored, and encoding always writes `payload_size` exactly.

/// Largest audio payload accepted in one frame. A 60 ms Opus packet is at most a few hundred
/// bytes; anything bigger than this is not audio from the firmware.
pub const MAX_AUDIO_PAYLOAD: usize = 16 * 1024;

/// Length of the v2 header.
pub const V2_HEADER_LEN: usize = 16;

/// Length of the v3 header.
pub const V3_HEADER_LEN: usize = 4;

/// `kind` of a frame carrying Opus audio.
pub const KIND_OPUS: u8 = 0;

/// `kind` of a frame carrying JSON (v2/v3 `type` 1).
pub const KIND_JSON: u8 = 1;

/// The binary protocol version a device speaks (NVS `websocket.version`, the `Protocol-Version`
/// header, `hello.version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ProtocolVersion {
    /// Raw Opus packets (the firmware default).
    #[default]
    V1,
    /// 16-byte header with a timestamp (server-side AEC).
    V2,
    /// 4-byte header.
    V3,
}

impl ProtocolVersion {
    /// The version with this number, if it is 1, 2 or 3.
    pub fn from_number(n: u32) -> Option<Self> {
        match n {
            1 => Some(Self::V1),
            2 => Some(Self::V2),
            3 => Some(Self::V3),
            _ => None,
        }
    }

    /// The version's number (1, 2 or 3).
    pub fn number(self) -> u32 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
            Self::V3 => 3,
        }
    }

    /// Bytes of header before the payload.
    pub fn header_len(self) -> usize {
        match self {
            Self::V1 => 0,
            Self::V2 => V2_HEADER_LEN,
            Self::V3 => V3_HEADER_LEN,
        }
    }
}

/// One decoded binary frame, borrowing its payload from the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFrame<'a> {
    /// The payload: one Opus packet (or JSON text when `kind` is [`KIND_JSON`]).
    pub payload: &'a [u8],
    /// The v2 timestamp in ms (server AEC); 0 for v1 and v3.
    pub timestamp: u32,
    /// 0 = Opus, 1 = JSON (the v2/v3 `type` field; a v2 type above 255 reads as 255); 0 for v1.
    pub kind: u8,
}

/// Why a binary frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame is shorter than its version's header.
    #[error("frame of {available} bytes is shorter than the {needed}-byte header")]
    ShortHeader {
        /// Header length of the version.
        needed: usize,
        /// Bytes received.
        available: usize,
    },
    /// The header declares more payload than the frame holds.
    #[error("frame declares a {declared}-byte payload but only {available} bytes follow the header")]
    Truncated {
        /// `payload_size` from the header.
        declared: usize,
        /// Bytes after the header.
        available: usize,
    },
    /// The payload is over [`MAX_AUDIO_PAYLOAD`].
    #[error("payload of {0} bytes is over the {MAX_AUDIO_PAYLOAD}-byte limit")]
    TooLarge(usize),
}

/// Decodes one binary frame of `version`.
pub fn decode(version: ProtocolVersion, data: &[u8]) -> Result<AudioFrame<'_>, FrameError> {
    match version {
        ProtocolVersion::V1 => {
            if data.len() > MAX_AUDIO_PAYLOAD {
                return Err(FrameError::TooLarge(data.len()));
            }
            Ok(AudioFrame { payload: data, timestamp: 0, kind: KIND_OPUS })
        }
        ProtocolVersion::V2 => {
            let Some((header, rest)) = data.split_first_chunk::<V2_HEADER_LEN>() else {
                return Err(FrameError::ShortHeader { needed: V2_HEADER_LEN, available: data.len() });
            };
            let kind = u16::from_be_bytes([header[2], header[3]]);
            let timestamp = u32::from_be_bytes([header[8], header[9], header[10], header[11]]);
            let declared = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
            // On 16-bit targets a size that does not fit usize is certainly over the limit.
            let declared = usize::try_from(declared).unwrap_or(usize::MAX);
            let payload = cut_payload(rest, declared)?;
            Ok(AudioFrame { payload, timestamp, kind: u8::try_from(kind).unwrap_or(u8::MAX) })
        }
        ProtocolVersion::V3 => {
            let Some((header, rest)) = data.split_first_chunk::<V3_HEADER_LEN>() else {
                return Err(FrameError::ShortHeader { needed: V3_HEADER_LEN, available: data.len() });
            };
            let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
            let payload = cut_payload(rest, declared)?;
            Ok(AudioFrame { payload, timestamp: 0, kind: header[0] })
        }
    }
}

/// The first `declared` bytes of `rest`, checked against the limit and the bytes available.
fn cut_payload(rest: &[u8], declared: usize) -> Result<&[u8], FrameError> {
    if declared > MAX_AUDIO_PAYLOAD {
        return Err(FrameError::TooLarge(declared));
    }
    rest.get(..declared).ok_or(FrameError::Truncated { declared, available: rest.len() })
}

/// Clears `out` and writes one Opus frame of `version` into it.
///
/// v2 frames carry `version=2`, `type=0`, `reserved=0` and `timestamp`; v3 frames `type=0`,
/// `reserved=0`; v1 frames are the bare payload (the timestamp is dropped). `payload_size` is always
/// the payload length. A v3 payload longer than 65535 bytes (never an Opus packet) cannot be
/// described by its header and is cut to 65535 bytes so the frame stays self-consistent.
pub fn encode(version: ProtocolVersion, payload: &[u8], timestamp: u32, out: &mut Vec<u8>) {
    out.clear();
    match version {
        ProtocolVersion::V1 => out.extend_from_slice(payload),
        ProtocolVersion::V2 => {
            let size = u32::try_from(payload.len()).unwrap_or(u32::MAX);
            let payload = payload.get(..size as usize).unwrap_or(payload);
            out.reserve(V2_HEADER_LEN + payload.len());
            out.extend_from_slice(&2u16.to_be_bytes());
            out.extend_from_slice(&u16::from(KIND_OPUS).to_be_bytes());
            out.extend_from_slice(&0u32.to_be_bytes());
            out.extend_from_slice(&timestamp.to_be_bytes());
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(payload);
        }
        ProtocolVersion::V3 => {
            let size = u16::try_from(payload.len()).unwrap_or(u16::MAX);
            let payload = payload.get(..usize::from(size)).unwrap_or(payload);
            out.reserve(V3_HEADER_LEN + payload.len());
            out.push(KIND_OPUS);
            out.push(0);
            out.extend_from_slice(&size.to_be_bytes());
            out.extend_from_slice(payload);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ProtocolVersion; 3] = [ProtocolVersion::V1, ProtocolVersion::V2, ProtocolVersion::V3];

    #[test]
    fn version_numbers_round_trip() {
        for v in ALL {
            assert_eq!(ProtocolVersion::from_number(v.number()), Some(v));
        }
        assert_eq!(ProtocolVersion::from_number(0), None);
        assert_eq!(ProtocolVersion::from_number(4), None);
        assert_eq!(ProtocolVersion::default(), ProtocolVersion::V1);
    }

    #[test]
    fn round_trips_every_version() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let mut out = vec![9, 9, 9];
        for v in ALL {
            encode(v, &payload, 0xDEAD_BEEF, &mut out);
            assert_eq!(out.len(), v.header_len() + payload.len());
            let frame = decode(v, &out).unwrap();
            assert_eq!(frame.payload, &payload[..]);
            assert_eq!(frame.kind, KIND_OPUS);
            let expected_ts = if v == ProtocolVersion::V2 { 0xDEAD_BEEF } else { 0 };
            assert_eq!(frame.timestamp, expected_ts);
        }
        // An empty payload round-trips too.
        for v in ALL {
            encode(v, &[], 7, &mut out);
            assert_eq!(decode(v, &out).unwrap().payload, &[] as &[u8]);
        }
    }

    #[test]
    fn v2_header_bytes_are_exact() {
        let mut out = Vec::new();
        encode(ProtocolVersion::V2, &[0xAA, 0xBB, 0xCC], 0x0102_0304, &mut out);
        assert_eq!(out, [0, 2, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 0, 0, 0, 3, 0xAA, 0xBB, 0xCC]);
    }

    #[test]
    fn v3_header_bytes_are_exact() {
        let mut out = Vec::new();
        let payload = vec![0x55; 0x0123];
        encode(ProtocolVersion::V3, &payload, 99, &mut out);
        assert_eq!(&out[..4], &[0, 0, 0x01, 0x23]);
        assert_eq!(&out[4..], &payload[..]);
    }

    #[test]
    fn v1_is_the_bare_packet() {
        let mut out = Vec::new();
        encode(ProtocolVersion::V1, &[1, 2, 3], 5, &mut out);
        assert_eq!(out, [1, 2, 3]);
        let f = decode(ProtocolVersion::V1, &[0xF8, 0xFF, 0xFE]).unwrap();
        assert_eq!(f, AudioFrame { payload: &[0xF8, 0xFF, 0xFE], timestamp: 0, kind: 0 });
    }

    #[test]
    fn v2_with_gateway_zeros_parses_and_ignores_trailing_bytes() {
        let mut data = vec![0u8; 8];
        data.extend_from_slice(&1234u32.to_be_bytes());
        data.extend_from_slice(&2u32.to_be_bytes());
        data.extend_from_slice(&[7, 8, 99, 99]);
        let f = decode(ProtocolVersion::V2, &data).unwrap();
        assert_eq!(f, AudioFrame { payload: &[7, 8], timestamp: 1234, kind: 0 });
    }

    #[test]
    fn v2_and_v3_report_the_type_field() {
        let mut data = vec![0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        data.extend_from_slice(b"{}");
        assert_eq!(decode(ProtocolVersion::V2, &data).unwrap().kind, KIND_JSON);
        assert_eq!(decode(ProtocolVersion::V3, &[1, 0, 0, 2, b'{', b'}']).unwrap().kind, KIND_JSON);
    }

    #[test]
    fn short_and_truncated_frames_are_refused() {
        assert_eq!(decode(ProtocolVersion::V2, &[0; 15]), Err(FrameError::ShortHeader { needed: 16, available: 15 }));
        assert_eq!(decode(ProtocolVersion::V3, &[0; 3]), Err(FrameError::ShortHeader { needed: 4, available: 3 }));
        let mut v2 = vec![0u8; 12];
        v2.extend_from_slice(&10u32.to_be_bytes());
        v2.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode(ProtocolVersion::V2, &v2), Err(FrameError::Truncated { declared: 10, available: 3 }));
        assert_eq!(
            decode(ProtocolVersion::V3, &[0, 0, 0, 5, 1, 2]),
            Err(FrameError::Truncated { declared: 5, available: 2 })
        );
    }

    #[test]
    fn oversize_payloads_are_refused() {
        let mut v2 = vec![0u8; 12];
        v2.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(ProtocolVersion::V2, &v2), Err(FrameError::TooLarge(u32::MAX as usize)));
        let big = vec![0u8; MAX_AUDIO_PAYLOAD + 1];
        assert_eq!(decode(ProtocolVersion::V1, &big), Err(FrameError::TooLarge(MAX_AUDIO_PAYLOAD + 1)));
        let mut v3 = vec![0, 0];
        v3.extend_from_slice(&(MAX_AUDIO_PAYLOAD as u16 + 1).to_be_bytes());
        v3.extend_from_slice(&big);
        assert_eq!(decode(ProtocolVersion::V3, &v3), Err(FrameError::TooLarge(MAX_AUDIO_PAYLOAD + 1)));
        // Exactly at the limit is fine.
        let mut out = Vec::new();
        encode(ProtocolVersion::V3, &big[..MAX_AUDIO_PAYLOAD], 0, &mut out);
        assert_eq!(decode(ProtocolVersion::V3, &out).unwrap().payload.len(), MAX_AUDIO_PAYLOAD);
    }
}
