//! The audio packets of the firmware's MQTT + UDP transport (`../shared/docs/device-protocol.md`
//! §3.2), as a pure codec: no socket, no clock.
//!
//! A datagram is a 16-byte big-endian header — `type 1u | flags 1u | payload_len 2u | ssrc 4u |
//! timestamp 4u | sequence 4u` — followed by the Opus packet encrypted with AES-128-CTR, whose IV
//! is the header itself. The server picks a random key and a 16-byte nonce per session and sends
//! both in its hello; the nonce fixes `type` (1), `flags` and the `ssrc` of every packet, and each
//! side counts its own `sequence` from 1. A receiver drops a datagram that is short, of another
//! type or ssrc, whose length disagrees with `payload_len`, or whose sequence is not above the
//! last one it accepted (a replay or a stale packet), or more than [`MAX_JUMP`] above it; a gap
//! is accepted. CTR has no integrity check, so the receiver also checks what a packet opens into
//! (the caller's `is_audio`: an Opus packet of the session's frame duration): one sealed under
//! another key opens into other bytes, is dropped, and does not move the sequence (a forger cannot
//! push it ahead of the device's).

use aes::cipher::{KeyIvInit, StreamCipher};

/// The length of the header (and of the nonce and the key).
pub const HEADER_LEN: usize = 16;
/// The only packet type (audio).
pub const AUDIO: u8 = 0x01;
/// The largest sequence step accepted: about a minute of 60 ms packets lost in a row. The device
/// counts from 1 on every hello, so a larger step is not its packet.
pub const MAX_JUMP: u32 = 1000;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The packet type ([`AUDIO`]).
    pub kind: u8,
    /// Flags (0).
    pub flags: u8,
    /// Bytes of payload after the header.
    pub payload_len: u16,
    /// The session's stream id (from the nonce).
    pub ssrc: u32,
    /// The audio timestamp, ms.
    pub timestamp: u32,
    /// The sender's packet count, from 1.
    pub sequence: u32,
}

impl Header {
    /// The header's 16 bytes.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0] = self.kind;
        out[1] = self.flags;
        out[2..4].copy_from_slice(&self.payload_len.to_be_bytes());
        out[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        out[8..12].copy_from_slice(&self.timestamp.to_be_bytes());
        out[12..16].copy_from_slice(&self.sequence.to_be_bytes());
        out
    }

    /// Reads a header from the first 16 bytes.
    pub fn from_bytes(bytes: &[u8; HEADER_LEN]) -> Self {
        let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        Self {
            kind: bytes[0],
            flags: bytes[1],
            payload_len: u16_at(2),
            ssrc: u32_at(4),
            timestamp: u32_at(8),
            sequence: u32_at(12),
        }
    }
}

/// A session's key and nonce, as its hello gives them to the device.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// The AES-128 key.
    pub key: [u8; 16],
    /// The nonce: a header with type 1, flags 0, the session's ssrc and zero length, timestamp
    /// and sequence.
    pub nonce: [u8; HEADER_LEN],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret: never in a log line.
        f.debug_struct("SessionKeys").field("ssrc", &self.ssrc()).finish_non_exhaustive()
    }
}

impl SessionKeys {
    /// Keys for a session whose stream id is `ssrc`, from 16 random bytes.
    pub fn new(key: [u8; 16], ssrc: u32) -> Self {
        let nonce = Header { kind: AUDIO, flags: 0, payload_len: 0, ssrc, timestamp: 0, sequence: 0 }.to_bytes();
        Self { key, nonce }
    }

    /// The stream id.
    pub fn ssrc(&self) -> u32 {
        Header::from_bytes(&self.nonce).ssrc
    }

    /// The hello's `udp.key` and `udp.nonce`: 32 lower-case hex digits each.
    pub fn hex(&self) -> (String, String) {
        (hex::encode(self.key), hex::encode(self.nonce))
    }
}

/// The sending side of one direction: numbers and seals packets.
#[derive(Debug)]
pub struct Sealer {
    keys: SessionKeys,
    sequence: u32,
}

impl Sealer {
    /// A sender whose first packet has sequence 1.
    pub fn new(keys: SessionKeys) -> Self {
        Self { keys, sequence: 0 }
    }

    /// The datagram carrying `payload` at `timestamp` (ms); `None` for a payload over 65 535
    /// bytes (Opus packets are far smaller).
    pub fn seal(&mut self, payload: &[u8], timestamp: u32) -> Option<Vec<u8>> {
        let payload_len = u16::try_from(payload.len()).ok()?;
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = Header::from_bytes(&self.keys.nonce);
        header.payload_len = payload_len;
        header.timestamp = timestamp;
        header.sequence = self.sequence;
        let iv = header.to_bytes();
        let mut datagram = Vec::with_capacity(HEADER_LEN + payload.len());
        datagram.extend_from_slice(&iv);
        datagram.extend_from_slice(payload);
        Aes128Ctr::new(&self.keys.key.into(), &iv.into()).apply_keystream(&mut datagram[HEADER_LEN..]);
        Some(datagram)
    }
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Dropped {
    /// Shorter than a header.
    #[error("shorter than the 16-byte header")]
    Short,
    /// Not an audio packet.
    #[error("packet type {0:#04x}, not audio")]
    Kind(u8),
    /// Another session's stream id.
    #[error("ssrc {0:#010x} is not this session's")]
    Ssrc(u32),
    /// The length disagrees with `payload_len`.
    #[error("{got} payload bytes where the header says {said}")]
    Length {
        /// What the header says.
        said: u16,
        /// What arrived.
        got: usize,
    },
    /// Not above the last sequence accepted: a replay or a stale packet.
    #[error("sequence {got} is not above {last}")]
    Replayed {
        /// The last sequence accepted.
        last: u32,
        /// The sequence received.
        got: u32,
    },
    /// Too far above the last sequence accepted.
    #[error("sequence {got} is more than {MAX_JUMP} above {last}")]
    Jump {
        /// The last sequence accepted.
        last: u32,
        /// The sequence received.
        got: u32,
    },
    /// It opened into bytes that are not the session's audio (another key, or garbage).
    #[error("it does not open into an audio packet (another key?)")]
    NotAudio,
}

impl Dropped {
    /// A short name, for metrics labels.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Short => "short",
            Self::Kind(_) => "type",
            Self::Ssrc(_) => "ssrc",
            Self::Length { .. } => "length",
            Self::Replayed { .. } => "replayed",
            Self::Jump { .. } => "sequence_jump",
            Self::NotAudio => "not_audio",
        }
    }
}

/// The receiving side of one direction: checks and opens packets.
#[derive(Debug)]
pub struct Opener {
    keys: SessionKeys,
    last: u32,
    gaps: u64,
}

/// An opened packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Its header.
    pub header: Header,
    /// The decrypted payload (Opus).
    pub payload: Vec<u8>,
    /// Packets missing between the previous accepted one and this one.
    pub missing: u32,
}

impl Opener {
    /// A receiver that has accepted nothing yet.
    pub fn new(keys: SessionKeys) -> Self {
        Self { keys, last: 0, gaps: 0 }
    }

    /// Checks and decrypts `datagram`, and accepts it when `is_audio` says its payload is the
    /// session's audio; the sequence only advances when it is accepted.
    pub fn open(&mut self, datagram: &[u8], is_audio: impl FnOnce(&[u8]) -> bool) -> Result<Opened, Dropped> {
        let Some((head, body)) = datagram.split_first_chunk::<HEADER_LEN>() else { return Err(Dropped::Short) };
        let header = Header::from_bytes(head);
        if header.kind != AUDIO {
            return Err(Dropped::Kind(header.kind));
        }
        if header.ssrc != self.keys.ssrc() {
            return Err(Dropped::Ssrc(header.ssrc));
        }
        if usize::from(header.payload_len) != body.len() {
            return Err(Dropped::Length { said: header.payload_len, got: body.len() });
        }
        if header.sequence <= self.last {
            return Err(Dropped::Replayed { last: self.last, got: header.sequence });
        }
        let missing = header.sequence - self.last - 1;
        if missing >= MAX_JUMP {
            return Err(Dropped::Jump { last: self.last, got: header.sequence });
        }
        let mut payload = body.to_vec();
        Aes128Ctr::new(&self.keys.key.into(), &(*head).into()).apply_keystream(&mut payload);
        if !is_audio(&payload) {
            return Err(Dropped::NotAudio);
        }
        if missing > 0 {
            self.gaps += 1;
        }
        self.last = header.sequence;
        Ok(Opened { header, payload, missing })
    }

    /// How many times packets were missing (gaps are accepted, and counted).
    pub fn gaps(&self) -> u64 {
        self.gaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &[u8]) -> bool {
        true
    }

    fn keys() -> SessionKeys {
        SessionKeys::new(*b"0123456789abcdef", 0x0102_0304)
    }

    #[test]
    fn the_nonce_and_hello_fields_are_the_firmwares() {
        let keys = keys();
        let (key, nonce) = keys.hex();
        assert_eq!(key, "30313233343536373839616263646566");
        assert_eq!(nonce, "01000000010203040000000000000000");
        assert_eq!(keys.ssrc(), 0x0102_0304);
        assert!(!format!("{keys:?}").contains("3031"), "the key stays out of logs");
    }

    #[test]
    fn sealed_packets_open_in_order_and_replays_are_dropped() {
        let mut device = Sealer::new(keys());
        let mut server = Opener::new(keys());
        let first = device.seal(b"opus one", 60).expect("sealed");
        assert_eq!(first.len(), HEADER_LEN + 8);
        assert_ne!(&first[HEADER_LEN..], b"opus one", "the payload is encrypted");
        assert_eq!(&first[..4], &[0x01, 0x00, 0x00, 0x08], "type, flags, payload_len");
        assert_eq!(&first[12..16], &1u32.to_be_bytes(), "the first sequence is 1");
        let opened = server.open(&first, any).expect("opens");
        assert_eq!(opened.payload, b"opus one");
        assert_eq!(opened.header.timestamp, 60);
        assert_eq!(server.open(&first, any), Err(Dropped::Replayed { last: 1, got: 1 }), "a replay");
        let _lost = device.seal(b"two", 120);
        let third = device.seal(b"three", 180).expect("sealed");
        let opened = server.open(&third, any).expect("a gap is accepted");
        assert_eq!((opened.payload.as_slice(), opened.missing, server.gaps()), (b"three".as_slice(), 1, 1));
        assert_eq!(server.open(&first, any), Err(Dropped::Replayed { last: 3, got: 1 }), "a stale packet");
    }

    #[test]
    fn malformed_datagrams_are_dropped_and_the_sequence_stays() {
        let mut device = Sealer::new(keys());
        let mut server = Opener::new(keys());
        let packet = device.seal(b"abc", 0).expect("sealed");
        assert_eq!(server.open(&packet[..10], any), Err(Dropped::Short));
        let mut other = packet.clone();
        other[0] = 2;
        assert_eq!(server.open(&other, any), Err(Dropped::Kind(2)));
        let mut stranger = packet.clone();
        stranger[7] = 0xFF;
        assert_eq!(server.open(&stranger, any), Err(Dropped::Ssrc(0x0102_03FF)));
        assert_eq!(server.open(&packet[..HEADER_LEN + 2], any), Err(Dropped::Length { said: 3, got: 2 }));
        // None of those moved the sequence: the real packet still opens.
        assert_eq!(server.open(&packet, any).expect("opens").payload, b"abc");
        // Another key opens into other bytes (CTR has no check): they are not the audio, and the
        // forger's far-ahead sequence does not stop the device's next packet.
        let mut forger = Sealer::new(SessionKeys::new(*b"fedcba9876543210", 0x0102_0304));
        let _ = forger.seal(b"x", 0);
        let forged = forger.seal(b"abc", 0).expect("sealed");
        assert_eq!(server.open(&forged, |p| p == b"abc"), Err(Dropped::NotAudio));
        let mut far = forged.clone();
        far[12..16].copy_from_slice(&(2 + MAX_JUMP).to_be_bytes());
        assert_eq!(server.open(&far, any), Err(Dropped::Jump { last: 1, got: 2 + MAX_JUMP }));
        let next = device.seal(b"def", 60).expect("sealed");
        assert_eq!(server.open(&next, |p| p == b"def").expect("opens").payload, b"def");
        assert!(device.seal(&vec![0; 70_000], 0).is_none());
    }

    #[test]
    fn the_keystream_is_standard_aes_128_ctr() {
        // NIST SP 800-38A F.5.1 (CTR-AES128.Encrypt), first block: the IV is the counter block.
        let key: [u8; 16] = hex::decode("2b7e151628aed2a6abf7158809cf4f3c").expect("hex").try_into().expect("16");
        let iv: [u8; 16] = hex::decode("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").expect("hex").try_into().expect("16");
        let mut block = hex::decode("6bc1bee22e409f96e93d7e117393172a").expect("hex");
        Aes128Ctr::new(&key.into(), &iv.into()).apply_keystream(&mut block);
        assert_eq!(hex::encode(block), "874d6191b620e3261bef6864990db6ce");
    }
}
