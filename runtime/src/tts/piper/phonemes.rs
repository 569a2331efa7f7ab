//! Text → phonemes → phoneme ids, the way Piper's own phonemizer does it, with the espeak-ng
//! program instead of the linked library.
//!
//! Piper asks espeak-ng for IPA one clause at a time (`espeak_TextToPhonemes`, IPA mode, no tie
//! or separator characters), drops `(lang)` switch flags, appends the clause's punctuation
//! (`.` `?` `!` alone; `,` `:` `;` followed by a space), splits the result into Unicode
//! code points after NFD decomposition and starts a new sentence after `.` `?` `!`. Each
//! sentence becomes `^ _ p₁ _ p₂ _ … pₙ _ $` through the voice's `phoneme_id_map`.
//!
//! The espeak-ng program (`-q --ipa`) prints the same IPA, one line per clause, but not the
//! punctuation that ended each clause. So the text is also split into clauses here, with espeak's
//! main rules (punctuation followed by a space or the end, a full stop followed by a lower-case
//! word does not end a clause). When espeak's line count matches, lines and terminators are paired
//! in order; when it does not (an abbreviation such as "Dr." that espeak knows), each clause is
//! phonemized on its own, which is exact about the punctuation at the cost of one more process per
//! clause.

use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::process::{Command, Stdio};

use crate::remote::ProviderError;

/// Beginning of sentence.
pub(crate) const BOS: char = '^';
/// End of sentence.
pub(crate) const EOS: char = '$';
/// Padding, written after every phoneme.
pub(crate) const PAD: char = '_';

/// Characters after which a clause may end (when a space or the end of the text follows).
fn is_clause_punct(c: char) -> bool {
    matches!(c, '.' | ',' | '?' | '!' | ':' | ';' | '…' | '—')
}

/// Closing quotes and brackets that may stand between the punctuation and the space.
fn is_closing(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '}' | '”' | '’' | '»')
}

/// The phonemes Piper appends after a clause ended by `terminator` (espeak reports a dash as
/// `;` and an ellipsis as nothing).
fn terminator_phonemes(terminator: Option<char>) -> &'static [char] {
    match terminator {
        Some('—') => &[';', ' '],
        Some('.') => &['.'],
        Some('?') => &['?'],
        Some('!') => &['!'],
        Some(',') => &[',', ' '],
        Some(':') => &[':', ' '],
        Some(';') => &[';', ' '],
        _ => &[],
    }
}

/// Whether a clause ended by `terminator` ends the sentence.
fn ends_sentence(terminator: Option<char>) -> bool {
    matches!(terminator, Some('.' | '?' | '!'))
}

/// One clause of the input text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Clause {
    /// The words of the clause, including its punctuation (espeak reads it).
    pub text: String,
    /// The punctuation that ended it, if any: the first mark of a run such as `?!`, `…` for a run
    /// of dots.
    pub terminator: Option<char>,
}

/// Replaces control characters (newlines included: two of them would be a paragraph break for
/// espeak) with spaces and collapses runs of white space.
pub(crate) fn normalize_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Splits normalized text into clauses with espeak-ng's main rules.
pub(crate) fn split_clauses(text: &str) -> Vec<Clause> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let char_at = |i: usize| chars.get(i).map(|&(_, c)| c);
    let byte_at = |i: usize| chars.get(i).map_or(text.len(), |&(b, _)| b);
    let mut clauses = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    while let Some(c) = char_at(i) {
        if !is_clause_punct(c) {
            i += 1;
            continue;
        }
        // The run of punctuation, then any closing quotes or brackets.
        let mut last = i;
        while char_at(last + 1).is_some_and(is_clause_punct) {
            last += 1;
        }
        // espeak reports the first mark of a run (`?!` asks), and a run of dots is an ellipsis.
        let dots = chars.get(i..=last).is_some_and(|run| run.len() > 1 && run.iter().all(|&(_, c)| c == '.'));
        let terminator = if dots { '…' } else { c };
        let mut end = last + 1;
        while char_at(end).is_some_and(is_closing) {
            end += 1;
        }
        let ends = match char_at(end) {
            None => true,
            Some(next) if next.is_whitespace() => {
                // "p.m. today", "e.g. this": a lone full stop before a lower-case word is an
                // abbreviation for espeak, not the end of a sentence.
                let lone_dot = c == '.' && last == i && end == last + 1;
                let next_word_lower = chars
                    .get(end..)
                    .and_then(|rest| rest.iter().map(|&(_, c)| c).find(|c| !c.is_whitespace()))
                    .is_some_and(char::is_lowercase);
                !(lone_dot && next_word_lower)
            }
            Some(_) => false,
        };
        if ends {
            let cut = byte_at(end);
            if let Some(piece) = text.get(start..cut) {
                let piece = piece.trim();
                if !piece.is_empty() {
                    clauses.push(Clause { text: piece.to_owned(), terminator: Some(terminator) });
                }
            }
            start = cut;
        }
        i = end.max(i + 1);
    }
    if let Some(rest) = text.get(start..) {
        let rest = rest.trim();
        if !rest.is_empty() {
            clauses.push(Clause { text: rest.to_owned(), terminator: None });
        }
    }
    clauses
}

/// NFD decomposition of the precomposed letters espeak-ng's IPA output can contain (Piper
/// decomposes every phoneme string, so `ç` reaches the model as `c` + U+0327).
fn decompose(c: char) -> Option<(char, char)> {
    const GRAVE: char = '\u{300}';
    const ACUTE: char = '\u{301}';
    const CIRCUMFLEX: char = '\u{302}';
    const TILDE: char = '\u{303}';
    const MACRON: char = '\u{304}';
    const DIAERESIS: char = '\u{308}';
    const RING: char = '\u{30A}';
    const CARON: char = '\u{30C}';
    const CEDILLA: char = '\u{327}';
    let pair = match c {
        'à' => ('a', GRAVE),
        'á' => ('a', ACUTE),
        'â' => ('a', CIRCUMFLEX),
        'ã' => ('a', TILDE),
        'ä' => ('a', DIAERESIS),
        'å' => ('a', RING),
        'ā' => ('a', MACRON),
        'ǎ' => ('a', CARON),
        'ç' => ('c', CEDILLA),
        'è' => ('e', GRAVE),
        'é' => ('e', ACUTE),
        'ê' => ('e', CIRCUMFLEX),
        'ẽ' => ('e', TILDE),
        'ë' => ('e', DIAERESIS),
        'ē' => ('e', MACRON),
        'ě' => ('e', CARON),
        'ì' => ('i', GRAVE),
        'í' => ('i', ACUTE),
        'î' => ('i', CIRCUMFLEX),
        'ĩ' => ('i', TILDE),
        'ï' => ('i', DIAERESIS),
        'ī' => ('i', MACRON),
        'ǐ' => ('i', CARON),
        'ñ' => ('n', TILDE),
        'ò' => ('o', GRAVE),
        'ó' => ('o', ACUTE),
        'ô' => ('o', CIRCUMFLEX),
        'õ' => ('o', TILDE),
        'ö' => ('o', DIAERESIS),
        'ō' => ('o', MACRON),
        'ǒ' => ('o', CARON),
        'ù' => ('u', GRAVE),
        'ú' => ('u', ACUTE),
        'û' => ('u', CIRCUMFLEX),
        'ũ' => ('u', TILDE),
        'ü' => ('u', DIAERESIS),
        'ū' => ('u', MACRON),
        'ǔ' => ('u', CARON),
        'ý' => ('y', ACUTE),
        'ỹ' => ('y', TILDE),
        'ÿ' => ('y', DIAERESIS),
        _ => return None,
    };
    Some(pair)
}

/// Appends the phonemes of one espeak output line: `(lang)` flags removed, NFD-decomposed,
/// surrounding white space dropped.
fn push_line(line: &str, out: &mut Vec<char>) {
    let mut in_flag = false;
    for c in line.trim().chars() {
        if in_flag {
            in_flag = c != ')';
        } else if c == '(' {
            in_flag = true;
        } else if let Some((base, mark)) = decompose(c) {
            out.extend([base, mark]);
        } else {
            out.push(c);
        }
    }
}

/// Whether a sentence holds anything to say (not only punctuation and spaces).
fn has_speech(phonemes: &[char]) -> bool {
    phonemes.iter().any(|&c| !c.is_whitespace() && !matches!(c, '.' | ',' | '?' | '!' | ':' | ';'))
}

/// Builds Piper's per-sentence phoneme lists from each clause's espeak lines and terminator.
/// Sentences with nothing to say are dropped.
pub(crate) fn assemble<'a>(clauses: impl IntoIterator<Item = (Vec<&'a str>, Option<char>)>) -> Vec<Vec<char>> {
    let mut sentences = Vec::new();
    let mut current: Vec<char> = Vec::new();
    for (lines, terminator) in clauses {
        for line in lines {
            // Clauses without punctuation between them (Piper glues them) and the lines of one
            // clause are joined with a word boundary.
            if current.last().is_some_and(|c| *c != ' ') {
                current.push(' ');
            }
            push_line(line, &mut current);
        }
        current.extend_from_slice(terminator_phonemes(terminator));
        if ends_sentence(terminator) {
            let done = std::mem::take(&mut current);
            if has_speech(&done) {
                sentences.push(done);
            }
        }
    }
    while current.last() == Some(&' ') {
        current.pop();
    }
    if has_speech(&current) {
        sentences.push(current);
    }
    sentences
}

/// The espeak-ng program, used for IPA phonemes.
#[derive(Debug, Clone)]
pub(crate) struct Espeak {
    /// The program (a name looked up in `PATH`, or a path).
    program: String,
    /// The espeak voice (`espeak.voice` of the Piper voice).
    voice: String,
}

impl Espeak {
    /// An espeak-ng program speaking `voice`.
    pub(crate) fn new(program: &str, voice: &str) -> Self {
        Self { program: program.to_owned(), voice: voice.to_owned() }
    }

    /// Checks that the program runs and knows the voice; every failure is a configuration error.
    pub(crate) fn check(&self) -> Result<(), ProviderError> {
        match self.run("test") {
            Ok(lines) if lines.iter().any(|l| !l.trim().is_empty()) => Ok(()),
            Ok(_) => Err(ProviderError::Config(format!(
                "espeak program `{}` gave no phonemes for voice `{}`",
                self.program, self.voice
            ))),
            Err(ProviderError::Protocol { message, .. }) => Err(ProviderError::Config(message)),
            Err(e) => Err(e),
        }
    }

    /// Runs espeak on `text` (given on stdin, never through a shell) and returns its output lines,
    /// one per clause.
    fn run(&self, text: &str) -> Result<Vec<String>, ProviderError> {
        let mut child = Command::new(&self.program)
            .args(["-q", "--ipa", "-b", "1", "-v", &self.voice, "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| self.spawn_error(&e))?;
        // Write from another thread so a large output can never block us against a full pipe.
        let stdin = child.stdin.take();
        let output = std::thread::scope(|scope| {
            let writer = scope.spawn(move || match stdin {
                Some(mut stdin) => stdin.write_all(text.as_bytes()),
                None => Ok(()),
            });
            let output = child.wait_with_output();
            let written = writer.join().unwrap_or_else(|_| Err(std::io::Error::other("stdin writer panicked")));
            (output, written)
        });
        let failed = |message: String| ProviderError::Protocol { url: self.program.clone(), message };
        let output = match output {
            (Ok(output), _) if !output.status.success() => {
                let stderr = String::from_utf8_lossy(&output.stderr);
                return Err(failed(format!(
                    "espeak program `{}` (voice `{}`) failed ({}): {}",
                    self.program,
                    self.voice,
                    output.status,
                    stderr.trim()
                )));
            }
            (Ok(output), Ok(())) => output,
            (Ok(_), Err(e)) | (Err(e), _) => {
                return Err(failed(format!("espeak program `{}`: {e}", self.program)));
            }
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        Ok(stdout.lines().map(str::to_owned).collect())
    }

    /// The error for a program that could not be started.
    fn spawn_error(&self, e: &std::io::Error) -> ProviderError {
        if e.kind() == ErrorKind::NotFound {
            ProviderError::Config(format!(
                "espeak program `{}` not found: apt-get install espeak-ng (or set `espeak` to its path)",
                self.program
            ))
        } else {
            ProviderError::Config(format!("cannot run espeak program `{}`: {e}", self.program))
        }
    }

    /// Phonemizes `text` into Piper's sentences of phonemes (empty when there is nothing to say).
    pub(crate) fn phonemize(&self, text: &str) -> Result<Vec<Vec<char>>, ProviderError> {
        let text = normalize_text(text);
        let clauses = split_clauses(&text);
        if clauses.is_empty() {
            return Ok(Vec::new());
        }
        let lines = self.run(&text)?;
        if lines.len() == clauses.len() {
            return Ok(assemble(
                lines.iter().zip(&clauses).map(|(line, clause)| (vec![line.as_str()], clause.terminator)),
            ));
        }
        tracing::debug!(
            clauses = clauses.len(),
            espeak_lines = lines.len(),
            "espeak split the text differently; phonemizing clause by clause"
        );
        let mut per_clause = Vec::with_capacity(clauses.len());
        for clause in &clauses {
            per_clause.push((self.run(&clause.text)?, clause.terminator));
        }
        Ok(assemble(
            per_clause.iter().map(|(lines, terminator)| (lines.iter().map(String::as_str).collect(), *terminator)),
        ))
    }
}

/// A voice's `phoneme_id_map`, with the vowel clusters it declares.
#[derive(Debug, Clone)]
pub(crate) struct PhonemeIdMap {
    /// Ids of single code points.
    single: HashMap<char, Vec<i64>>,
    /// Multi-code-point phonemes (the voice's `vowel_clusters`), longest first.
    clusters: Vec<(Vec<char>, Vec<i64>)>,
    /// Ids of `^`, `$` and `_`.
    bos: Vec<i64>,
    eos: Vec<i64>,
    pad: Vec<i64>,
}

/// Phoneme ids of one sentence and the phonemes that had none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SentenceIds {
    /// `^ _ p₁ _ … pₙ _ $`.
    pub ids: Vec<i64>,
    /// Phonemes missing from the map (skipped), in order.
    pub missing: Vec<char>,
}

impl PhonemeIdMap {
    /// Builds the map from the voice's `phoneme_id_map` and `vowel_clusters`. Fails when `^`, `$`
    /// or `_` is missing, or an id is negative or not below `num_symbols`.
    pub(crate) fn new(
        map: &HashMap<String, Vec<i64>>,
        vowel_clusters: &[Vec<String>],
        num_symbols: Option<usize>,
    ) -> Result<Self, String> {
        for (key, ids) in map {
            if let Some(bad) = ids.iter().find(|&&id| id < 0 || num_symbols.is_some_and(|n| id as u64 >= n as u64)) {
                return Err(format!("phoneme {key:?} has id {bad}, outside the model's {num_symbols:?} symbols"));
            }
        }
        let mut single = HashMap::with_capacity(map.len());
        for (key, ids) in map {
            let mut chars = key.chars();
            if let (Some(c), None) = (chars.next(), chars.next()) {
                single.insert(c, ids.clone());
            }
        }
        let mut clusters: Vec<(Vec<char>, Vec<i64>)> = vowel_clusters
            .iter()
            .filter_map(|parts| {
                let joined: String = parts.concat();
                let ids = map.get(&joined)?;
                let chars: Vec<char> = joined.chars().collect();
                (chars.len() > 1).then(|| (chars, ids.clone()))
            })
            .collect();
        clusters.sort_by_key(|(chars, _)| std::cmp::Reverse(chars.len()));
        let special = |c: char| single.get(&c).cloned().ok_or_else(|| format!("phoneme_id_map has no {c:?}"));
        Ok(Self { bos: special(BOS)?, eos: special(EOS)?, pad: special(PAD)?, clusters, single })
    }

    /// Piper's id sequence for one sentence: `^`, `_`, then each phoneme's ids followed by `_`,
    /// then `$`. Phonemes without ids are skipped and reported.
    pub(crate) fn ids(&self, phonemes: &[char]) -> SentenceIds {
        let mut ids = Vec::with_capacity(phonemes.len() * 2 + 3);
        let mut missing = Vec::new();
        ids.extend_from_slice(&self.bos);
        ids.extend_from_slice(&self.pad);
        let mut rest = phonemes;
        while let Some(&c) = rest.first() {
            let cluster = self.clusters.iter().find(|(chars, _)| rest.starts_with(chars));
            let (taken, found) = match cluster {
                Some((chars, cluster_ids)) => (chars.len(), Some(cluster_ids)),
                None => (1, self.single.get(&c)),
            };
            match found {
                Some(found) => {
                    ids.extend_from_slice(found);
                    ids.extend_from_slice(&self.pad);
                }
                None => missing.push(c),
            }
            rest = rest.get(taken..).unwrap_or_default();
        }
        ids.extend_from_slice(&self.eos);
        SentenceIds { ids, missing }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clause(text: &str, terminator: Option<char>) -> Clause {
        Clause { text: text.into(), terminator }
    }

    #[test]
    fn clauses_follow_espeak_punctuation_rules() {
        assert_eq!(
            split_clauses("Hello, how are you today?"),
            vec![clause("Hello,", Some(',')), clause("how are you today?", Some('?'))]
        );
        assert_eq!(
            split_clauses("One; two: three, four. Five"),
            vec![
                clause("One;", Some(';')),
                clause("two:", Some(':')),
                clause("three,", Some(',')),
                clause("four.", Some('.')),
                clause("Five", None)
            ]
        );
        // Runs take their first mark (a run of dots is an ellipsis); closing quotes and brackets may follow.
        assert_eq!(
            split_clauses("wow?! Amazing!!! He said \"hi.\" Then (yes!) ok..."),
            vec![
                clause("wow?!", Some('?')),
                clause("Amazing!!!", Some('!')),
                clause("He said \"hi.\"", Some('.')),
                clause("Then (yes!)", Some('!')),
                clause("ok...", Some('…'))
            ]
        );
        // No space after the mark: numbers, times, initials.
        assert_eq!(
            split_clauses("It costs $3.50 at 10:30, U.S.A."),
            vec![clause("It costs $3.50 at 10:30,", Some(',')), clause("U.S.A.", Some('.'))]
        );
        // A full stop before a lower-case word is an abbreviation.
        assert_eq!(
            split_clauses("at 5 p.m. today. Then"),
            vec![clause("at 5 p.m. today.", Some('.')), clause("Then", None)]
        );
        assert_eq!(
            split_clauses("wait… what — no"),
            vec![clause("wait…", Some('…')), clause("what —", Some('—')), clause("no", None)]
        );
        assert!(split_clauses("").is_empty());
        assert_eq!(split_clauses("..."), vec![clause("...", Some('…'))]);
    }

    #[test]
    fn text_is_normalized_to_single_spaces() {
        assert_eq!(normalize_text("  line one\nline\ttwo\r\n\n para \u{7} "), "line one line two para");
        assert_eq!(normalize_text(" \n\t "), "");
    }

    #[test]
    fn assembly_appends_terminators_and_splits_sentences() {
        let sentences = assemble([
            (vec!["həlˈoʊ"], Some(',')),
            (vec!["hˌaʊ ɑːɹ juː"], Some('?')),
            (vec!["(fr)bɔ̃ʒˈuʁ(en) fˈaɪn "], Some('.')),
            (vec!["wˈeɪt"], Some('—')),
            (vec!["ˈoʊkˈeɪ"], Some('…')),
            (vec!["ˈɛnd", "mˈoːɹ"], None),
        ]);
        let text: Vec<String> = sentences.iter().map(|s| s.iter().collect()).collect();
        // Language switch flags go, the words stay; a dash reads as `;`, an ellipsis as a pause
        // inside the sentence.
        assert_eq!(text, vec!["həlˈoʊ, hˌaʊ ɑːɹ juː?", "bɔ̃ʒˈuʁ fˈaɪn.", "wˈeɪt; ˈoʊkˈeɪ ˈɛnd mˈoːɹ"]);
        // Punctuation-only sentences are dropped.
        assert!(assemble([(vec![""], Some('.')), (vec!["  "], Some('!'))]).is_empty());
        // Precomposed letters are decomposed like Piper's NFD.
        let sentences = assemble([(vec!["fasˈɑːd ñ"], None)]);
        assert_eq!(sentences, vec![vec!['f', 'a', 's', 'ˈ', 'ɑ', 'ː', 'd', ' ', 'n', '\u{303}']]);
        let sentences = assemble([(vec!["ç"], None)]);
        assert_eq!(sentences, vec![vec!['c', '\u{327}']]);
    }

    fn id_map() -> PhonemeIdMap {
        let map: HashMap<String, Vec<i64>> =
            [("_", 0), ("^", 1), ("$", 2), (" ", 3), ("a", 14), ("ɪ", 74), ("aɪ", 161), ("h", 20)]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), vec![v]))
                .collect();
        PhonemeIdMap::new(&map, &[vec!["a".into(), "ɪ".into()]], Some(256)).unwrap()
    }

    #[test]
    fn ids_are_framed_and_padded_like_piper() {
        let map = id_map();
        let got = map.ids(&['h', 'a', 'ɪ', ' ', 'a', 'x', 'ɪ']);
        // ^ _ h _ aɪ _ ␠ _ a _ ɪ _ $ (the cluster merges; the unknown `x` is skipped).
        assert_eq!(got.ids, vec![1, 0, 20, 0, 161, 0, 3, 0, 14, 0, 74, 0, 2]);
        assert_eq!(got.missing, vec!['x']);
        assert_eq!(map.ids(&[]).ids, vec![1, 0, 2]);
    }

    #[test]
    fn id_map_rejects_missing_specials_and_bad_ids() {
        let mut map: HashMap<String, Vec<i64>> =
            [("_", 0), ("^", 1), ("$", 2)].into_iter().map(|(k, v)| (k.to_owned(), vec![v])).collect();
        assert!(PhonemeIdMap::new(&map, &[], Some(3)).is_ok());
        map.insert("a".into(), vec![3]);
        let err = PhonemeIdMap::new(&map, &[], Some(3)).unwrap_err();
        assert!(err.contains("\"a\""), "{err}");
        map.insert("a".into(), vec![-1]);
        assert!(PhonemeIdMap::new(&map, &[], None).is_err());
        map.remove("a");
        map.remove("$");
        let err = PhonemeIdMap::new(&map, &[], None).unwrap_err();
        assert!(err.contains("'$'"), "{err}");
    }

    fn espeak() -> Espeak {
        Espeak::new("espeak-ng", "en-us")
    }

    #[test]
    fn espeak_phonemizes_with_punctuation() {
        let sentences = espeak().phonemize("Hello, how are you today?").expect("espeak-ng must be installed");
        assert_eq!(sentences.len(), 1, "{sentences:?}");
        let text: String = sentences[0].iter().collect();
        assert!(text.starts_with("həlˈoʊ, "), "{text}");
        assert!(text.ends_with('?'), "{text}");
        assert!(text.contains("tədˈeɪ"), "{text}");
        let two = espeak().phonemize("It works. Does it?").unwrap();
        assert_eq!(two.len(), 2, "{two:?}");
        assert_eq!(two[0].last(), Some(&'.'));
        assert_eq!(two[1].last(), Some(&'?'));
        // Nothing to say: no sentences.
        assert!(espeak().phonemize("  ... ").unwrap().is_empty());
        assert!(espeak().phonemize("").unwrap().is_empty());
    }

    #[test]
    fn espeak_falls_back_to_clause_by_clause_when_it_splits_differently() {
        // espeak knows "Dr." and keeps "Dr. Who" in one clause; we split there, so the line
        // counts differ and each clause is phonemized alone, keeping every word.
        let sentences = espeak().phonemize("Dr. Who is here, yes. Fine").unwrap();
        let text: Vec<String> = sentences.iter().map(|s| s.iter().collect()).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].contains("dˈɑːktɚ"), "{text:?}");
        assert!(text[1].contains("hˈɪɹ, "), "{text:?}");
        assert!(text[2].contains("fˈaɪn"), "{text:?}");
    }

    #[test]
    fn text_reaches_espeak_verbatim_without_a_shell() {
        // Shell syntax and option-like text are just words.
        let sentences = espeak().phonemize("-v xx $(echo hi); `ls` | cat").unwrap();
        assert!(!sentences.is_empty());
    }

    #[test]
    fn missing_espeak_is_a_config_error_with_the_fix() {
        let err = Espeak::new("/nonexistent/espeak-ng-x", "en-us").check().unwrap_err();
        let ProviderError::Config(message) = err else { panic!("{err:?}") };
        assert!(message.contains("/nonexistent/espeak-ng-x"), "{message}");
        assert!(message.contains("apt-get install espeak-ng"), "{message}");
        let err = Espeak::new("espeak-ng", "xx-no-such-voice").check().unwrap_err();
        let ProviderError::Config(message) = err else { panic!("{err:?}") };
        assert!(message.contains("xx-no-such-voice"), "{message}");
    }
}
