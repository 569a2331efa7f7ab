//! A tiny baseline JPEG encoder for the camera photos of the vision tests (no image tool is
//! installed, and nothing is downloaded).
//!
//! It writes a real JFIF file: one greyscale component, 8×8 blocks, a quantisation table of ones,
//! and Huffman tables of its own (DC categories as 4-bit codes, AC with only end-of-block), so
//! each block holds its mean brightness: a mosaic. Any JPEG decoder reads it.

/// A `width`×`height` greyscale JPEG (both rounded up to multiples of 8) whose 8×8 block at
/// (`bx`, `by`) has the brightness `shade(bx, by)`.
pub fn mosaic(width: u16, height: u16, shade: impl Fn(u16, u16) -> u8) -> Vec<u8> {
    let (bw, bh) = (width.div_ceil(8).max(1), height.div_ceil(8).max(1));
    let mut out = Vec::new();
    out.extend_from_slice(&[0xFF, 0xD8]); // SOI
    // APP0 JFIF 1.1, no thumbnail.
    out.extend_from_slice(&[0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0]);
    // DQT: table 0, 8-bit, all ones.
    out.extend_from_slice(&[0xFF, 0xDB, 0x00, 0x43, 0x00]);
    out.extend_from_slice(&[1u8; 64]);
    // SOF0: 8-bit, height, width, one component (id 1, 1×1 sampling, table 0).
    out.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x0B, 0x08]);
    out.extend_from_slice(&(bh * 8).to_be_bytes());
    out.extend_from_slice(&(bw * 8).to_be_bytes());
    out.extend_from_slice(&[0x01, 0x01, 0x11, 0x00]);
    // DHT: DC table 0 with the 12 categories as 4-bit codes; AC table 0 with EOB (00) and ZRL (01).
    out.extend_from_slice(&[0xFF, 0xC4, 0x00, 0x32, 0x00]);
    let mut dc_counts = [0u8; 16];
    dc_counts[3] = 12;
    out.extend_from_slice(&dc_counts);
    out.extend(0u8..12);
    out.push(0x10);
    let mut ac_counts = [0u8; 16];
    ac_counts[1] = 2;
    out.extend_from_slice(&ac_counts);
    out.extend_from_slice(&[0x00, 0xF0]);
    // SOS: one component, tables 0/0, spectral 0..63, no approximation.
    out.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3F, 0x00]);
    let mut bits = BitWriter::default();
    let mut previous = 0i32;
    for by in 0..bh {
        for bx in 0..bw {
            // The DCT's DC term of a flat block is 8 × (level − 128); the quantiser is 1.
            let dc = 8 * (i32::from(shade(bx, by)) - 128);
            let diff = dc - previous;
            previous = dc;
            let category = 32 - diff.unsigned_abs().leading_zeros();
            bits.put(category, 4);
            if category > 0 {
                let value = if diff < 0 { diff + (1 << category) - 1 } else { diff };
                bits.put(value as u32, category);
            }
            bits.put(0b00, 2); // end of block
        }
    }
    out.extend_from_slice(&bits.finish());
    out.extend_from_slice(&[0xFF, 0xD9]); // EOI
    out
}

/// Entropy-coded bits, most significant first, with 0xFF stuffing.
#[derive(Default)]
struct BitWriter {
    out: Vec<u8>,
    acc: u32,
    len: u32,
}

impl BitWriter {
    fn put(&mut self, value: u32, count: u32) {
        for i in (0..count).rev() {
            self.acc = (self.acc << 1) | ((value >> i) & 1);
            self.len += 1;
            if self.len == 8 {
                self.byte();
            }
        }
    }

    fn byte(&mut self) {
        let b = (self.acc & 0xFF) as u8;
        self.out.push(b);
        if b == 0xFF {
            self.out.push(0x00);
        }
        self.acc = 0;
        self.len = 0;
    }

    /// The bytes, the last one padded with ones.
    fn finish(mut self) -> Vec<u8> {
        if self.len > 0 {
            let pad = 8 - self.len;
            self.acc = (self.acc << pad) | ((1 << pad) - 1);
            self.byte();
        }
        self.out
    }
}
