//! Whisper's byte-level BPE tokenizer, decode side only (`tokenizer.json`, Hugging Face format).
//!
//! Token strings spell bytes through GPT-2's byte-to-unicode table (every byte maps to one
//! printable character). Decoding concatenates the token strings, maps each character back to its
//! byte and decodes the bytes as UTF-8 (lossily: a multi-byte character split across a cut-off
//! sequence becomes U+FFFD instead of an error).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

/// Largest vocabulary accepted (Whisper's is 51 865): a guard against a corrupt file asking for a
/// huge table.
const MAX_VOCAB: usize = 1 << 20;

/// The parts of `tokenizer.json` that decoding needs.
#[derive(Deserialize)]
struct TokenizerFile {
    /// The BPE model.
    model: ModelSection,
    /// Added tokens (the special `<|...|>` tokens among them).
    #[serde(default)]
    added_tokens: Vec<AddedToken>,
}

/// `model` of `tokenizer.json`.
#[derive(Deserialize)]
struct ModelSection {
    /// Token string → id.
    vocab: HashMap<String, u32>,
}

/// One entry of `added_tokens`.
#[derive(Deserialize)]
struct AddedToken {
    /// The token id.
    id: u32,
    /// The token text.
    content: String,
    /// Whether it is a control token (left out of decoded text).
    #[serde(default)]
    special: bool,
}

/// Decodes token ids to text.
#[derive(Debug)]
pub struct Tokenizer {
    /// The bytes of each id; `None` for ids with no entry and for special tokens.
    bytes: Vec<Option<Box<[u8]>>>,
    /// Every token's string, special ones included, for looking ids up by name.
    by_name: HashMap<String, u32>,
}

/// GPT-2's byte → character table: printable Latin-1 bytes map to themselves, the others to
/// U+0100 and up, in byte order.
fn byte_to_char() -> [char; 256] {
    let printable = |b: u32| (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b);
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let b = b as u32;
        let code = if printable(b) {
            b
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{fffd}');
    }
    table
}

impl Tokenizer {
    /// Reads `tokenizer.json`. `first_special` is the end-of-text id: it and every id above it
    /// are control tokens and never appear in decoded text.
    pub fn load(path: &Path, first_special: u32) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(&text, first_special).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses the text of `tokenizer.json`.
    pub fn parse(json: &str, first_special: u32) -> Result<Self, String> {
        let file: TokenizerFile = serde_json::from_str(json).map_err(|e| format!("not a tokenizer.json: {e}"))?;
        if file.model.vocab.is_empty() {
            return Err("the vocabulary is empty".into());
        }
        let mut reverse: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, c) in byte_to_char().into_iter().enumerate() {
            reverse.insert(c, b as u8);
        }
        let highest = file.model.vocab.values().chain(file.added_tokens.iter().map(|t| &t.id)).copied().max();
        let len = highest.map_or(0, |h| h as usize + 1);
        if len > MAX_VOCAB {
            return Err(format!("token id {} is implausibly large", len - 1));
        }
        let mut bytes: Vec<Option<Box<[u8]>>> = vec![None; len];
        let mut by_name = HashMap::with_capacity(len);
        for (token, &id) in &file.model.vocab {
            by_name.insert(token.clone(), id);
            if id >= first_special {
                continue;
            }
            let mut out = Vec::with_capacity(token.len());
            for c in token.chars() {
                match reverse.get(&c) {
                    Some(&b) => out.push(b),
                    // Not in the byte table (not expected in a byte-level vocabulary): keep it.
                    None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
            if let Some(slot) = bytes.get_mut(id as usize) {
                *slot = Some(out.into_boxed_slice());
            }
        }
        for added in &file.added_tokens {
            by_name.insert(added.content.clone(), added.id);
            if added.special || added.id >= first_special {
                if let Some(slot) = bytes.get_mut(added.id as usize) {
                    *slot = None;
                }
            } else if let Some(slot) = bytes.get_mut(added.id as usize) {
                // A non-special added token is literal text.
                *slot = Some(added.content.as_bytes().into());
            }
        }
        Ok(Self { bytes, by_name })
    }

    /// The id of a token string such as `<|notimestamps|>`, if the tokenizer has it.
    pub fn id_of(&self, token: &str) -> Option<u32> {
        self.by_name.get(token).copied()
    }

    /// Decodes ids to text, leaving out special and unknown ids. The text is not trimmed.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if let Some(Some(bytes)) = self.bytes.get(id as usize) {
                out.extend_from_slice(bytes);
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_file(model: &str, file: &str) -> std::path::PathBuf {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models").join(model).join(file);
        assert!(path.is_file(), "{} is needed by this test (the shared Whisper models)", path.display());
        path
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let table = byte_to_char();
        assert_eq!(table[b'A' as usize], 'A');
        assert_eq!(table[b' ' as usize], 'Ġ'); // U+0120
        assert_eq!(table[b'\n' as usize], 'Ċ'); // U+010A
        assert_eq!(table[0], 'Ā'); // U+0100
        assert_eq!(table[0xad], '\u{143}'); // the soft hyphen is the last non-printable byte
        let mut sorted = table.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 256, "the table is a bijection");
    }

    #[test]
    fn decodes_the_reference_ids() {
        let tiny = Tokenizer::load(&model_file("whisper-tiny-en", "tokenizer.json"), 50256).unwrap();
        let ids = [18435, 11, 3387, 1210, 319, 262, 9592, 1657, 290, 1560, 502, 262, 6193, 1909, 13];
        assert_eq!(tiny.decode(&ids), " Hello, please turn on the kitchen light and tell me the weather today.");
        // Special tokens are left out of the text and found by name.
        assert_eq!(tiny.decode(&[50257, 18435, 50256, 50362]), " Hello");
        assert_eq!(tiny.id_of("<|notimestamps|>"), Some(50362));

        let base = Tokenizer::load(&model_file("whisper-base", "tokenizer.json"), 50257).unwrap();
        let ids = [
            42833, 35570, 11, 3355, 7095, 785, 978, 9801, 30, 42890, 10857, 1482, 32917, 294, 1163, 30726, 1876, 364,
            13,
        ];
        assert_eq!(base.decode(&ids), " Guten Morgen, wie geht es die heute? Bitte macht das Licht in der Küche an.");
        assert_eq!(base.id_of("<|de|>"), Some(50261));
        assert_eq!(base.decode(&[50258, 50261, 50359, 50363, 999_999]), "");
    }

    #[test]
    fn split_utf8_is_lossy_not_an_error() {
        // "ü" is two bytes: Ã (0xC3) then ¼ (0xBC) in the byte table; a lone 0xC3 is invalid.
        let json = r#"{"model": {"vocab": {"Ã": 0, "¼": 1, "Ġa": 2, "<|endoftext|>": 3}},
            "added_tokens": [{"id": 3, "content": "<|endoftext|>", "special": true}]}"#;
        let tok = Tokenizer::parse(json, 3).unwrap();
        assert_eq!(tok.decode(&[0, 1, 2]), "ü a");
        assert_eq!(tok.decode(&[0, 2]), "\u{fffd} a");
        assert_eq!(tok.decode(&[3, 2]), " a");
        assert!(Tokenizer::parse("{}", 3).is_err());
        assert!(Tokenizer::parse(r#"{"model": {"vocab": {}}}"#, 3).is_err());
    }
}
