//! A small gzip (RFC 1952) reader for HTTP bodies. QWeather compresses every answer with gzip
//! even when the request does not ask for it; the host may or may not inflate it, so the guest
//! accepts both plain and gzip bodies.

/// The gzip magic bytes.
const MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Compression method 8: deflate.
const METHOD_DEFLATE: u8 = 8;
/// Header flag: a CRC16 of the header follows.
const FLAG_HCRC: u8 = 0x02;
/// Header flag: an extra field follows.
const FLAG_EXTRA: u8 = 0x04;
/// Header flag: a zero-terminated file name follows.
const FLAG_NAME: u8 = 0x08;
/// Header flag: a zero-terminated comment follows.
const FLAG_COMMENT: u8 = 0x10;

/// Whether `body` starts with the gzip magic bytes.
pub fn is_gzip(body: &[u8]) -> bool {
    body.starts_with(&MAGIC)
}

/// The CRC-32 (IEEE, as used by gzip) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Skips a zero-terminated field starting at `at` and returns the position after the zero.
fn skip_zero_terminated(body: &[u8], at: usize) -> Result<usize, String> {
    let rest = body.get(at..).ok_or("truncated gzip header")?;
    let end = rest.iter().position(|&byte| byte == 0).ok_or("unterminated gzip header field")?;
    Ok(at + end + 1)
}

/// Inflates one gzip member, checking its CRC-32 and size, and refusing output longer than
/// `max_len` bytes.
///
/// # Errors
/// A message when the header, the deflate stream or the trailer is invalid, or the output is
/// too long.
pub fn decompress(body: &[u8], max_len: usize) -> Result<Vec<u8>, String> {
    let header = body.get(..10).ok_or("truncated gzip header")?;
    if header.get(..2) != Some(&MAGIC[..]) || header.get(2) != Some(&METHOD_DEFLATE) {
        return Err("not a gzip deflate stream".to_owned());
    }
    let flags = header.get(3).copied().unwrap_or(0);
    let mut at = 10;
    if flags & FLAG_EXTRA != 0 {
        let length = body.get(at..at + 2).ok_or("truncated gzip extra field")?;
        at += 2 + usize::from(u16::from_le_bytes([length[0], length[1]]));
    }
    if flags & FLAG_NAME != 0 {
        at = skip_zero_terminated(body, at)?;
    }
    if flags & FLAG_COMMENT != 0 {
        at = skip_zero_terminated(body, at)?;
    }
    if flags & FLAG_HCRC != 0 {
        at += 2;
    }
    let stream_len = body.len().checked_sub(8).filter(|&end| end >= at).ok_or("truncated gzip stream")?;
    let stream = body.get(at..stream_len).ok_or("truncated gzip stream")?;
    let trailer = body.get(stream_len..).ok_or("truncated gzip trailer")?;
    let output = miniz_oxide::inflate::decompress_to_vec_with_limit(stream, max_len)
        .map_err(|error| format!("invalid gzip data: {error}"))?;
    let expected_crc = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let expected_len = u32::from_le_bytes([trailer[4], trailer[5], trailer[6], trailer[7]]);
    if crc32(&output) != expected_crc || output.len() as u32 != expected_len {
        return Err("gzip checksum mismatch".to_owned());
    }
    Ok(output)
}

/// The body as text: inflated first when it is gzip.
///
/// # Errors
/// A message when the gzip stream is invalid or the text is not UTF-8.
pub fn body_text(body: &[u8], max_len: usize) -> Result<String, String> {
    let bytes = if is_gzip(body) { decompress(body, max_len)? } else { body.to_vec() };
    String::from_utf8(bytes).map_err(|_| "the answer is not UTF-8 text".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `{"code":"200","text":"晴"}` compressed by Python's gzip with the file name `w.json`.
    const PYTHON_GZIP: [u8; 53] = [
        31, 139, 8, 8, 0, 0, 0, 0, 2, 255, 119, 46, 106, 115, 111, 110, 0, 171, 86, 74, 206, 79, 73, 85, 178, 82, 50,
        50, 48, 80, 210, 81, 42, 73, 173, 40, 1, 114, 158, 205, 220, 162, 84, 11, 0, 232, 1, 152, 3, 27, 0, 0, 0,
    ];

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
        out.extend(miniz_oxide::deflate::compress_to_vec(data, 6));
        out.extend(crc32(data).to_le_bytes());
        out.extend((data.len() as u32).to_le_bytes());
        out
    }

    #[test]
    fn crc_matches_the_reference_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn reads_python_gzip_with_a_file_name() {
        assert!(is_gzip(&PYTHON_GZIP));
        assert_eq!(body_text(&PYTHON_GZIP, 1024), Ok(r#"{"code":"200","text":"晴"}"#.to_owned()));
    }

    #[test]
    fn round_trips_and_passes_plain_bodies_through() {
        let text = "{\"now\":{\"temp\":\"21\"}}".repeat(50);
        assert_eq!(body_text(&gzip(text.as_bytes()), 1 << 20), Ok(text.clone()));
        assert_eq!(body_text(text.as_bytes(), 1 << 20), Ok(text));
    }

    #[test]
    fn rejects_corrupt_or_oversized_streams() {
        let mut corrupt = PYTHON_GZIP;
        corrupt[45] ^= 0xff; // inside the CRC
        assert!(decompress(&corrupt, 1024).is_err());
        assert!(decompress(&PYTHON_GZIP[..20], 1024).is_err());
        assert!(decompress(&PYTHON_GZIP, 10).is_err());
        assert!(decompress(&[0x1f, 0x8b], 1024).is_err());
        assert!(body_text(&[0xff, 0xfe], 1024).is_err());
    }
}
