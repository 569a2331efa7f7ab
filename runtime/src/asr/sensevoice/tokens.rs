//! `tokens.txt` and CTC greedy decoding.
//!
//! sherpa-onnx's export writes one SentencePiece piece per line as `<piece> <id>`; id 0
//! (`<unk>`) doubles as the CTC blank unless the model's metadata says otherwise.

use std::collections::HashMap;
use std::path::Path;

use crate::remote::ProviderError;

/// The SentencePiece word-boundary marker (U+2581), shown as a space.
const WORD_BOUNDARY: char = '\u{2581}';

/// Token ids above this are refused (the real vocabulary has 25,055 entries).
const MAX_TOKEN_ID: u32 = 10_000_000;

/// The id → piece table of `tokens.txt`.
#[derive(Debug)]
pub(crate) struct Tokens {
    /// Pieces by id.
    pieces: HashMap<u32, String>,
}

impl Tokens {
    /// Reads `tokens.txt`. A missing or unreadable file, or a line that is not `<piece> <id>`,
    /// is a [`ProviderError::Config`] naming the file (and the line).
    pub(crate) fn load(path: &Path) -> Result<Self, ProviderError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProviderError::Config(format!("cannot read SenseVoice tokens {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| ProviderError::Config(format!("{}: {e}", path.display())))
    }

    /// Parses the text of `tokens.txt`. A line holding only an id is the piece " " (sherpa-onnx
    /// writes a space piece that way).
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut pieces = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() {
                continue;
            }
            let (piece, id) = match line.trim_end().rsplit_once(char::is_whitespace) {
                Some((piece, id)) if !piece.trim().is_empty() => (piece.trim(), id),
                Some((_, id)) => (" ", id),
                None => (" ", line.trim()),
            };
            let id: u32 = id
                .parse()
                .ok()
                .filter(|id| *id <= MAX_TOKEN_ID)
                .ok_or_else(|| format!("line {} is not `<token> <id>`: {line:?}", number + 1))?;
            pieces.insert(id, piece.to_string());
        }
        if pieces.is_empty() {
            return Err("no tokens".into());
        }
        Ok(Self { pieces })
    }

    /// Whether every id below `vocab_size` has a piece.
    pub(crate) fn first_missing(&self, vocab_size: usize) -> Option<usize> {
        (0..vocab_size).find(|id| u32::try_from(*id).map_or(true, |id| !self.pieces.contains_key(&id)))
    }

    /// The piece of `id`.
    pub(crate) fn piece(&self, id: usize) -> Option<&str> {
        u32::try_from(id).ok().and_then(|id| self.pieces.get(&id)).map(String::as_str)
    }

    /// Concatenates the pieces of `ids` and turns the word-boundary marker into spaces (tags
    /// such as `<|zh|>` are kept as they are). Unknown ids are skipped.
    pub(crate) fn detokenize(&self, ids: &[usize]) -> String {
        ids.iter().filter_map(|id| self.piece(*id)).collect::<String>().replace(WORD_BOUNDARY, " ")
    }
}

/// CTC greedy search over `logits` (rows of `vocab` scores): the best id of every row, with
/// runs of the same id collapsed and `blank` dropped.
pub(crate) fn ctc_greedy(logits: &[f32], vocab: usize, blank: usize) -> Vec<usize> {
    if vocab == 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut previous = None;
    for row in logits.chunks_exact(vocab) {
        // The first maximum, as numpy / torch argmax.
        let best =
            row.iter().enumerate().fold((0, f32::NEG_INFINITY), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc }).0;
        if previous != Some(best) && best != blank {
            out.push(best);
        }
        previous = Some(best);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pieces_ids_and_the_space_piece() {
        let tokens = Tokens::parse("<unk> 0\n<s> 1\r\n▁he 2\n 3\n4\n<|zh|> 5\n\n").unwrap();
        assert_eq!(tokens.piece(0), Some("<unk>"));
        assert_eq!(tokens.piece(2), Some("▁he"));
        assert_eq!(tokens.piece(3), Some(" "));
        assert_eq!(tokens.piece(4), Some(" "));
        assert_eq!(tokens.piece(5), Some("<|zh|>"));
        assert_eq!(tokens.piece(6), None);
        assert_eq!(tokens.first_missing(6), None);
        assert_eq!(tokens.first_missing(7), Some(6));
    }

    #[test]
    fn refuses_bad_lines() {
        let err = Tokens::parse("<unk> 0\nhello world\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(Tokens::parse("a -1\n").is_err());
        assert!(Tokens::parse("a 99999999999\n").is_err());
        assert!(Tokens::parse("\n\n").is_err());
    }

    #[test]
    fn detokenize_turns_boundaries_into_spaces() {
        let tokens = Tokens::parse("<unk> 0\n<|en|> 1\n▁hel 2\nlo 3\n▁world 4\n").unwrap();
        assert_eq!(tokens.detokenize(&[1, 2, 3, 4]), "<|en|> hello world");
        assert_eq!(tokens.detokenize(&[2, 99, 3]), " hello");
    }

    #[test]
    fn ctc_collapses_repeats_and_drops_blanks() {
        // vocab 3, blank 0; argmax rows: 1 1 0 1 2 2 0 0 2
        let rows: [[f32; 3]; 9] = [
            [0., 1., 0.],
            [0., 2., 1.],
            [3., 1., 0.],
            [0., 1., 0.],
            [0., 0., 1.],
            [0., 0., 5.],
            [1., 0., 0.],
            [1., 0., 0.],
            [0., 0., 1.],
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        assert_eq!(ctc_greedy(&flat, 3, 0), vec![1, 1, 2, 2]);
        // Another blank id.
        assert_eq!(ctc_greedy(&flat, 3, 2), vec![1, 0, 1, 0]);
        // Ties go to the first id.
        assert_eq!(ctc_greedy(&[1.0, 1.0, 0.0], 3, 2), vec![0]);
        assert!(ctc_greedy(&flat, 0, 0).is_empty());
    }
}
