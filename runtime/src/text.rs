//! Pure text processing for the reply path: streaming sentence segmentation for TTS, cleaning of
//! segments before they are spoken, emoji → emotion lookup for the device's face, and the
//! normalisation used to match exit commands and wake words.
//!
//! Everything here is synchronous and free of I/O.
//!
//! # Segmentation, compared with the Python server
//!
//! The Python server (`tts/base.py _get_segment_text`) accumulates the LLM deltas and cuts at the
//! *minimum over punctuation marks of each mark's last occurrence*, which can merge or split
//! sentences unpredictably. [`SentenceSplitter`] instead cuts at every boundary in turn, earliest
//! first, so each complete sentence is emitted on its own as soon as it is complete. The
//! punctuation sets are the Python ones:
//!
//! - the first segment of a reply is also cut on commas and similar (`，` `~` `～` `、` `,` `。`
//!   `？` `?` `！` `!` `；` `;` `：` `:`), so the first audio starts early;
//! - later segments are cut only on sentence ends (`。` `？` `?` `！` `!` `；` `;` `：`).
//!
//! In addition, a newline always ends a segment and `.` followed by whitespace ends a sentence, so
//! Markdown lists and English replies split too. An ASCII mark only counts when what follows it is
//! whitespace or a non-ASCII character: `3.5`, `1,000`, `10:30` and `http://` are never cut, and a
//! mark that is the last character received waits for the next delta (or [`SentenceSplitter::finish`])
//! to decide. A `.` that ends an ordered-list marker at the start of a line (`1. `) is not a
//! sentence end. Abbreviations such as `Mr. Smith` are cut (a known limitation).
//!
//! Closing quotes, brackets and Markdown emphasis right after a mark stay with the sentence they
//! close. Segments with nothing speakable left after cleaning (`😊，`, `。。`) are dropped, and a
//! first segment with a single letter or digit (`嗯，`, `I,`) is merged into the next one instead
//! of being spoken alone.

/// The emotion sent when a reply has no emoji from the table: `("🙂", "happy")`.
pub const DEFAULT_EMOTION: (&str, &str) = ("🙂", "happy");

/// Longest segment [`SentenceSplitter::new`] emits, in characters (`limits.sentence_chars`).
pub const DEFAULT_MAX_SEGMENT_CHARS: usize = 300;

/// A first segment needs at least this many letters or digits to be emitted on its own.
const MIN_FIRST_SEGMENT_ALNUM: usize = 2;

/// A short first segment is merged into the next only while the pending text is at most this long
/// (in bytes), which bounds the work spent re-cleaning it.
const MAX_MERGED_FIRST_BYTES: usize = 256;

/// Longest link text (in characters) recognised as `[text](url)`.
const MAX_LINK_TEXT: usize = 256;

/// Longest link target (in characters) recognised as `[text](url)`.
const MAX_LINK_URL: usize = 2048;

/// Streaming segmentation of LLM deltas into speakable segments.
///
/// Feed every text delta of one reply to [`push`](Self::push), which returns the segments that are
/// complete, then call [`finish`](Self::finish) to flush the rest. Every returned segment has been
/// through [`clean_for_speech`] and is never empty. After `finish` (or [`reset`](Self::reset)) the
/// splitter is ready for the next reply, whose first segment is again cut on commas.
#[derive(Debug, Clone)]
pub struct SentenceSplitter {
    /// Text received and not yet emitted.
    buf: String,
    /// Byte offset in `buf` from which to look for the next boundary; no boundary lies before it.
    scan_from: usize,
    /// True until the first segment of the reply has been emitted.
    first: bool,
    /// True when `buf` starts at the beginning of a line (used for ordered-list markers).
    at_line_start: bool,
    /// Longest segment, in characters: longer text is cut at a space or a clause mark (or, when
    /// there is none, right at the limit), so no subtitle or TTS request is ever unbounded.
    max_chars: usize,
}

/// The outcome of looking for a boundary in the buffer.
enum Scan {
    /// A segment ends at this byte offset (exclusive).
    Cut(usize),
    /// The mark at this byte offset needs the next character to decide.
    Wait(usize),
    /// No boundary in the buffer.
    Nothing,
}

impl Default for SentenceSplitter {
    fn default() -> Self {
        Self::new()
    }
}

impl SentenceSplitter {
    /// A splitter at the start of a reply, with segments of at most
    /// [`DEFAULT_MAX_SEGMENT_CHARS`] characters.
    pub fn new() -> Self {
        Self::with_max_chars(DEFAULT_MAX_SEGMENT_CHARS)
    }

    /// A splitter whose segments have at most `max_chars` characters (at least 1).
    pub fn with_max_chars(max_chars: usize) -> Self {
        Self { buf: String::new(), scan_from: 0, first: true, at_line_start: true, max_chars: max_chars.max(1) }
    }

    /// Adds one LLM delta and returns every segment it completed, in order (possibly none).
    pub fn push(&mut self, delta: &str) -> Vec<String> {
        self.buf.push_str(delta);
        let mut out = Vec::new();
        loop {
            let scan = find_boundary(&self.buf, self.scan_from, self.first, self.at_line_start);
            // Text too long for one segment: a segment that ends at this boundary is cut into
            // pieces whole; without a boundary, pieces are cut while more than a segment is left.
            let (region, whole) = match scan {
                Scan::Cut(end) => (end, true),
                Scan::Wait(_) | Scan::Nothing => (self.buf.len(), false),
            };
            if split_point(self.buf.get(..region).unwrap_or_default(), self.max_chars).is_some() {
                let mut start = 0;
                while let Some(cut) = split_point(self.buf.get(start..region).unwrap_or_default(), self.max_chars) {
                    self.emit(start..start + cut, &mut out);
                    start += cut;
                }
                if whole {
                    self.emit(start..region, &mut out);
                    start = region;
                    self.at_line_start = self.buf.get(..region).is_some_and(|s| s.ends_with('\n'));
                }
                self.buf.drain(..start);
                self.scan_from = 0;
                continue;
            }
            match scan {
                Scan::Cut(end) => {
                    let segment = self.buf.get(..end).unwrap_or_default();
                    let cleaned = clean_for_speech(segment);
                    if self.first
                        && !cleaned.is_empty()
                        && alnum_count(&cleaned) < MIN_FIRST_SEGMENT_ALNUM
                        && end <= MAX_MERGED_FIRST_BYTES
                    {
                        // Too short to be spoken alone: keep it and look for the next boundary.
                        self.scan_from = end;
                        continue;
                    }
                    self.at_line_start = segment.ends_with('\n');
                    self.buf.drain(..end);
                    self.scan_from = 0;
                    if !cleaned.is_empty() {
                        self.first = false;
                        out.push(cleaned);
                    }
                }
                Scan::Wait(at) => {
                    self.scan_from = at;
                    break;
                }
                Scan::Nothing => {
                    self.scan_from = self.buf.len();
                    break;
                }
            }
        }
        out
    }

    /// Cleans the piece `range` of the buffer and emits it if anything speakable is left.
    fn emit(&mut self, range: std::ops::Range<usize>, out: &mut Vec<String>) {
        let cleaned = clean_for_speech(self.buf.get(range).unwrap_or_default());
        if !cleaned.is_empty() {
            self.first = false;
            out.push(cleaned);
        }
    }

    /// The cleaned text of the segment being written, up to where a boundary may still be found
    /// (a mark that needs the next character to decide is left out, so what is handed out never
    /// belongs to the next segment); empty when there is none. For a TTS that takes a sentence's
    /// text as it is written.
    pub fn pending(&self) -> String {
        clean_for_speech(self.buf.get(..self.scan_from).unwrap_or_default())
    }

    /// Flushes what is left at the end of the reply (cleaned; `None` when nothing speakable is
    /// left) and makes the splitter ready for the next reply.
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        self.reset();
        let cleaned = clean_for_speech(&rest);
        (!cleaned.is_empty()).then_some(cleaned)
    }

    /// Drops any pending text (for example when the reply is aborted) and starts a new reply.
    pub fn reset(&mut self) {
        self.buf.clear();
        self.scan_from = 0;
        self.first = true;
        self.at_line_start = true;
    }
}

/// `text` cut to at most `max` characters, with a note saying how much was cut; borrowed when it
/// is short enough.
pub fn cut_chars(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((at, _)) => {
            let rest = text.get(at..).map_or(0, |rest| rest.chars().count());
            std::borrow::Cow::Owned(format!("{}… [{rest} more characters cut]", text.get(..at).unwrap_or_default()))
        }
    }
}

/// `text` cut to at most `max` bytes (at a character boundary), with a note saying how much was
/// cut; the note is counted in the `max` bytes when `max` leaves room for it.
pub fn cut_bytes(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let note = format!("… [{} more bytes cut]", text.len());
    let keep = max.saturating_sub(note.len());
    let mut end = keep.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + note.len());
    out.push_str(text.get(..end).unwrap_or_default());
    if keep > 0 {
        out.push_str(&format!("… [{} more bytes cut]", text.len() - end));
    }
    std::borrow::Cow::Owned(out)
}

/// Where to cut `text` when it has more than `max` characters: after the last space or clause
/// mark in the second half of its first `max` characters, else right after them. `None` when it
/// is short enough.
fn split_point(text: &str, max: usize) -> Option<usize> {
    if text.len() <= max {
        return None;
    }
    let (hard, _) = text.char_indices().nth(max)?;
    let window = text.get(..hard).unwrap_or_default();
    let soft = window
        .char_indices()
        .rev()
        .take_while(|(at, _)| *at > hard / 2)
        .find(|(_, c)| c.is_whitespace() || is_mark(*c, true))
        .map(|(at, c)| at + c.len_utf8());
    Some(soft.unwrap_or(hard))
}

/// Whether `c` ends a segment in the current mode (the first segment has the larger set).
fn is_mark(c: char, first: bool) -> bool {
    match c {
        '。' | '？' | '?' | '！' | '!' | '；' | ';' | '：' | '.' => true,
        '，' | '~' | '～' | '、' | ',' | ':' => first,
        _ => false,
    }
}

/// Characters that close what a mark ends and stay with the segment (`好。”`, `**Done.**`).
fn is_closer(c: char) -> bool {
    matches!(c, '"' | '\'' | ')' | ']' | '”' | '’' | '）' | '」' | '』' | '】' | '》' | '*' | '_' | '`')
}

/// Finds the earliest boundary at or after byte offset `from`.
fn find_boundary(buf: &str, from: usize, first: bool, at_line_start: bool) -> Scan {
    let Some(tail) = buf.get(from..) else {
        return Scan::Nothing;
    };
    for (off, c) in tail.char_indices() {
        let at = from + off;
        let after = at + c.len_utf8();
        if c == '\n' {
            return Scan::Cut(after);
        }
        if !is_mark(c, first) {
            continue;
        }
        let end = absorb_trailing(buf, after, first);
        if !c.is_ascii() {
            // Full-width marks are unambiguous: cut right away.
            return Scan::Cut(end);
        }
        match buf.get(end..).and_then(|rest| rest.chars().next()) {
            // The next character decides (`3.` may become `3.5`).
            None => return Scan::Wait(at),
            // `3.5`, `1,000`, `10:30`, `a?b`, `http://`: not a boundary.
            Some(next) if next.is_ascii() && !next.is_ascii_whitespace() => continue,
            Some(_) => {
                if c == '.' && is_ordered_list_marker(buf, at, at_line_start) {
                    continue;
                }
                return Scan::Cut(end);
            }
        }
    }
    Scan::Nothing
}

/// Extends a cut past further marks and closing characters (`？！`, `。”`, `...`).
fn absorb_trailing(buf: &str, mut end: usize, first: bool) -> usize {
    if let Some(rest) = buf.get(end..) {
        for c in rest.chars() {
            if is_mark(c, first) || is_closer(c) {
                end += c.len_utf8();
            } else {
                break;
            }
        }
    }
    end
}

/// Whether the `.` at byte offset `dot` ends an ordered-list marker such as `12.` at a line start.
fn is_ordered_list_marker(buf: &str, dot: usize, at_line_start: bool) -> bool {
    let Some(before) = buf.get(..dot) else {
        return false;
    };
    let line = match before.rfind('\n') {
        Some(nl) => before.get(nl + 1..).unwrap_or_default(),
        None if at_line_start => before,
        None => return false,
    };
    let digits = line.trim_start();
    (1..=3).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Number of letters and digits (any script) in `s`.
fn alnum_count(s: &str) -> usize {
    s.chars().filter(|c| c.is_alphanumeric()).count()
}

/// Whether `c` is an emoji or part of an emoji sequence (variation selectors, zero-width joiner,
/// skin tones, keycap, tag characters).
fn is_emoji(c: char) -> bool {
    matches!(
        u32::from(c),
        0x1F000..=0x1FAFF // Mahjong … Symbols and Pictographs Extended-A (incl. skin tones, flags)
            | 0x2600..=0x27BF // Miscellaneous Symbols, Dingbats
            | 0xFE0E..=0xFE0F // variation selectors
            | 0x200D // zero-width joiner
            | 0x20E3 // combining keycap
            | 0xE0020..=0xE007F // tag characters (subdivision flags)
            | 0x231A..=0x231B
            | 0x23E9..=0x23F3
            | 0x23F8..=0x23FA
            | 0x2B05..=0x2B07
            | 0x2B1B..=0x2B1C
            | 0x2B50
            | 0x2B55
            | 0x2934..=0x2935
            | 0x3030
            | 0x303D
            | 0x3297
            | 0x3299
    )
}

/// Characters stripped from both ends of a segment.
fn is_edge_junk(c: char) -> bool {
    c.is_whitespace()
        || is_emoji(c)
        || matches!(
            c,
            '，' | ','
                | '。'
                | '.'
                | '！'
                | '!'
                | '“'
                | '”'
                | '‘'
                | '’'
                | '"'
                | '：'
                | ':'
                | '-'
                | '－'
                | '、'
                | '['
                | ']'
                | '【'
                | '】'
                | '；'
                | ';'
                | '~'
                | '～'
                | '…'
                | '—'
                | '·'
                | '*'
                | '#'
                | '`'
                | '_'
                | '>'
                | '|'
                | '「'
                | '」'
                | '『'
                | '』'
        )
}

/// Prepares text for TTS (and for the `sentence_start` subtitle).
///
/// Removes Markdown (code-fence lines, leading `#` headers, `>` quotes, list markers `- ` `* `
/// `+ ` `1. ` `1) `, `**bold**`, `__bold__`, `*em*`, `~~strike~~`, `` `code` ``, `[text](url)` and
/// `![alt](url)` → the text), removes every emoji, collapses runs of whitespace (lines are joined
/// with a space) and strips whitespace, punctuation (`，,。.！!“”":：-－、[]【】；;~…` and similar)
/// and emoji from both ends. A leading `-` before a digit is kept (`-5`), and so are question
/// marks (they shape the intonation). Inner punctuation is kept: `"Hello, world!"` becomes
/// `Hello, world`. Returns an empty string when nothing speakable (no letter or digit) is left.
pub fn clean_for_speech(s: &str) -> String {
    let mut joined = String::with_capacity(s.len());
    for line in s.lines() {
        let line = line.trim();
        if line.starts_with("```") || line.starts_with("~~~") {
            continue;
        }
        let line = strip_line_prefix(line);
        if line.is_empty() {
            continue;
        }
        if !joined.is_empty() && !joined.ends_with(' ') {
            joined.push(' ');
        }
        push_inline(&mut joined, line);
    }
    let trimmed = trim_edges(&joined);
    if alnum_count(trimmed) == 0 {
        return String::new();
    }
    trimmed.to_string()
}

/// Strips a Markdown header, quote and list marker from the start of a trimmed line.
fn strip_line_prefix(line: &str) -> &str {
    let mut l = line;
    let hashes = l.bytes().take_while(|&b| b == b'#').count();
    if (1..=6).contains(&hashes)
        && let Some(rest) = l.get(hashes..)
        && (rest.is_empty() || rest.starts_with(char::is_whitespace))
    {
        l = rest.trim_start();
    }
    while let Some(rest) = l.strip_prefix('>') {
        l = rest.trim_start();
    }
    for marker in ["- ", "* ", "+ ", "• "] {
        if let Some(rest) = l.strip_prefix(marker) {
            return rest.trim_start();
        }
    }
    let digits = l.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=3).contains(&digits)
        && let Some(rest) = l.get(digits..)
        && let Some(rest) = rest.strip_prefix(". ").or_else(|| rest.strip_prefix(") "))
    {
        l = rest.trim_start();
    }
    l
}

/// Appends `line` to `out` without inline Markdown and emoji, collapsing whitespace.
fn push_inline(out: &mut String, line: &str) {
    let chars: Vec<char> = line.chars().collect();
    // A recognised link: skip from its `]` to its `)` inclusive.
    let mut link_tail: Option<(usize, usize)> = None;
    // Whether an emoji was removed since the last visible character.
    let mut after_emoji = false;
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        if let Some((close, paren_end)) = link_tail
            && i == close
        {
            i = paren_end + 1;
            link_tail = None;
            continue;
        }
        let prev = i.checked_sub(1).and_then(|p| chars.get(p)).copied();
        let next = chars.get(i + 1).copied();
        match c {
            '`' => {
                i += 1;
                continue;
            }
            '*' | '_' | '~' if next == Some(c) => {
                i += 2;
                continue;
            }
            '*' | '_' => {
                // Emphasis delimiters; `2*3` and `snake_case` keep theirs.
                let opening =
                    next.is_some_and(|n| !n.is_whitespace()) && !prev.is_some_and(|p| p.is_ascii_alphanumeric());
                let closing =
                    prev.is_some_and(|p| !p.is_whitespace()) && !next.is_some_and(|n| n.is_ascii_alphanumeric());
                if opening || closing {
                    i += 1;
                    continue;
                }
            }
            '!' if next == Some('[') => {
                if let Some(tail) = link_at(&chars, i + 1) {
                    link_tail = Some(tail);
                    i += 2;
                    continue;
                }
            }
            '[' => {
                if let Some(tail) = link_at(&chars, i) {
                    link_tail = Some(tail);
                    i += 1;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
        if is_emoji(c) {
            after_emoji = true;
            continue;
        }
        if after_emoji && is_pause_mark(c) {
            // Where an emoji was removed: "Hi 😊, there" → "Hi, there", "嗯，😊，好" → "嗯，好".
            if out.ends_with(' ') {
                out.pop();
            }
            if out.ends_with(c) {
                continue;
            }
        }
        if !c.is_whitespace() {
            after_emoji = false;
        }
        if c.is_whitespace() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
        } else {
            out.push(c);
        }
    }
}

/// Punctuation that attaches to the word before it.
fn is_pause_mark(c: char) -> bool {
    matches!(c, ',' | '，' | '、' | '.' | '。' | '!' | '！' | '?' | '？' | ';' | '；' | ':' | '：')
}

/// If a Markdown link `[text](url)` starts at `open`, the indices of its `]` and closing `)`.
fn link_at(chars: &[char], open: usize) -> Option<(usize, usize)> {
    let text_end = chars.len().min(open + 1 + MAX_LINK_TEXT);
    let close = (open + 1..text_end).find(|&j| chars.get(j) == Some(&']'))?;
    if chars.get(close + 1) != Some(&'(') {
        return None;
    }
    let url_end = chars.len().min(close + 2 + MAX_LINK_URL);
    let paren_end = (close + 2..url_end).find(|&k| chars.get(k) == Some(&')'))?;
    Some((close, paren_end))
}

/// `s` without [`is_edge_junk`] characters at either end (a `-` before a digit is kept).
fn trim_edges(s: &str) -> &str {
    let mut start = s.len();
    let mut iter = s.char_indices().peekable();
    while let Some((at, c)) = iter.next() {
        let keeps_sign = matches!(c, '-' | '－') && iter.peek().is_some_and(|&(_, n)| n.is_ascii_digit());
        if keeps_sign || !is_edge_junk(c) {
            start = at;
            break;
        }
    }
    let rest = s.get(start..).unwrap_or_default();
    rest.trim_end_matches(is_edge_junk)
}

/// Every emoji the emotion lookup knows, with the emoji sent back and the firmware's emotion name.
/// The first 22 rows are the firmware's table; the rest map common emoji to the nearest name.
const EMOTIONS: &[(char, &str, &str)] = &[
    ('😶', "😶", "neutral"),
    ('🙂', "🙂", "happy"),
    ('😆', "😆", "laughing"),
    ('😂', "😂", "funny"),
    ('😔', "😔", "sad"),
    ('😠', "😠", "angry"),
    ('😭', "😭", "crying"),
    ('😍', "😍", "loving"),
    ('😳', "😳", "embarrassed"),
    ('😯', "😯", "surprised"),
    ('😲', "😲", "surprised"),
    ('😱', "😱", "shocked"),
    ('🤔', "🤔", "thinking"),
    ('😉', "😉", "winking"),
    ('😎', "😎", "cool"),
    ('😌', "😌", "relaxed"),
    ('🤤', "🤤", "delicious"),
    ('😘', "😘", "kissy"),
    ('😏', "😏", "confident"),
    ('😴', "😴", "sleepy"),
    ('😜', "😜", "silly"),
    ('🙄', "🙄", "confused"),
    // Common others, mapped to the nearest name.
    ('😊', "😊", "happy"),
    ('😀', "😀", "happy"),
    ('😃', "😃", "happy"),
    ('😄', "😄", "happy"),
    ('☺', "☺️", "happy"),
    ('🤗', "🤗", "happy"),
    ('🤩', "🤩", "happy"),
    ('😇', "😇", "happy"),
    ('👍', "👍", "happy"),
    ('😁', "😁", "laughing"),
    ('🥳', "🥳", "laughing"),
    ('🤣', "🤣", "funny"),
    ('😹', "😹", "funny"),
    ('😅', "😅", "embarrassed"),
    ('😬', "😬", "embarrassed"),
    ('❤', "❤️", "loving"),
    ('🥰', "🥰", "loving"),
    ('😻', "😻", "loving"),
    ('💕', "💕", "loving"),
    ('💖', "💖", "loving"),
    ('😢', "😢", "sad"),
    ('😞', "😞", "sad"),
    ('😟', "😟", "sad"),
    ('🙁', "🙁", "sad"),
    ('☹', "☹️", "sad"),
    ('🥺', "🥺", "sad"),
    ('😿', "😿", "crying"),
    ('😡', "😡", "angry"),
    ('🤬', "🤬", "angry"),
    ('😤', "😤", "angry"),
    ('😮', "😮", "surprised"),
    ('😦', "😦", "surprised"),
    ('😧', "😧", "surprised"),
    ('😨', "😨", "shocked"),
    ('😰', "😰", "shocked"),
    ('🤯', "🤯", "shocked"),
    ('🧐', "🧐", "thinking"),
    ('😋', "😋", "delicious"),
    ('😗', "😗", "kissy"),
    ('😙', "😙", "kissy"),
    ('😚', "😚", "kissy"),
    ('😪', "😪", "sleepy"),
    ('🥱', "🥱", "sleepy"),
    ('💤', "💤", "sleepy"),
    ('😝', "😝", "silly"),
    ('😛', "😛", "silly"),
    ('🤪', "🤪", "silly"),
    ('😕', "😕", "confused"),
    ('🤨', "🤨", "confused"),
    ('😒', "😒", "confused"),
    ('😐', "😐", "neutral"),
    ('😑', "😑", "neutral"),
];

/// The first emoji in `text` that has an emotion, as `(emoji, emotion name)`.
///
/// The names are the firmware's 21 (neutral, happy, laughing, funny, sad, angry, crying, loving,
/// embarrassed, surprised, shocked, thinking, winking, cool, relaxed, delicious, kissy, confident,
/// sleepy, silly, confused); besides the firmware's own emoji, common others map to the nearest
/// name (`😊` → happy, `😁` → laughing, `❤️` → loving, `😢` → sad, …). Emoji without an emotion
/// are skipped. `None` when there is none; callers then use [`DEFAULT_EMOTION`].
pub fn emotion_of(text: &str) -> Option<(&'static str, &'static str)> {
    text.chars()
        .filter(|&c| is_emoji(c))
        .find_map(|c| EMOTIONS.iter().find(|(e, _, _)| *e == c).map(|&(_, emoji, name)| (emoji, name)))
}

/// Whether `normalize_command` drops `c`: whitespace, controls, ASCII punctuation and symbols,
/// emoji, and non-alphanumeric characters in the Unicode punctuation and symbol blocks.
fn is_command_noise(c: char) -> bool {
    if c.is_ascii() {
        return !c.is_ascii_alphanumeric();
    }
    if c.is_whitespace() || c.is_control() || is_emoji(c) {
        return true;
    }
    !c.is_alphanumeric()
        && matches!(
            u32::from(c),
            0x00A0..=0x00BF // Latin-1 punctuation and symbols
                | 0x00D7
                | 0x00F7
                | 0x2000..=0x2BFF // General Punctuation … Miscellaneous Symbols and Arrows
                | 0x2E00..=0x2E7F // Supplemental Punctuation
                | 0x3000..=0x303F // CJK Symbols and Punctuation
                | 0x30FB // Katakana middle dot
                | 0xFE00..=0xFE6F // variation selectors, vertical and small forms
                | 0xFEFF // byte-order mark
                | 0xFF00..=0xFFEF // full-width punctuation
        )
}

/// Normalises text for exit-command and wake-word matching: removes all punctuation (ASCII and
/// CJK), symbols, emoji and whitespace, and lowercases letters. `"退出。"` → `"退出"`,
/// `"Exit!"` → `"exit"`, `"Hi, Xiao Zhi"` → `"hixiaozhi"`.
pub fn normalize_command(s: &str) -> String {
    s.chars().filter(|&c| !is_command_noise(c)).flat_map(char::to_lowercase).collect()
}

/// Whether `text` equals one of `list` once both sides are [`normalize_command`]ed. Text that
/// normalises to nothing never matches.
pub fn matches_any(text: &str, list: &[String]) -> bool {
    let text = normalize_command(text);
    !text.is_empty() && list.iter().any(|entry| normalize_command(entry) == text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `deltas` in order and returns everything emitted, `finish` included.
    fn split(deltas: &[&str]) -> Vec<String> {
        let mut splitter = SentenceSplitter::new();
        let mut out: Vec<String> = deltas.iter().flat_map(|d| splitter.push(d)).collect();
        out.extend(splitter.finish());
        out
    }

    /// Feeds `text` one character at a time.
    fn split_chars(text: &str) -> Vec<String> {
        let chars: Vec<String> = text.chars().map(String::from).collect();
        let refs: Vec<&str> = chars.iter().map(String::as_str).collect();
        split(&refs)
    }

    /// Asserts that every way of cutting `text` into two deltas, and char-by-char feeding, give
    /// `expected`.
    fn assert_split_everywhere(text: &str, expected: &[&str]) {
        assert_eq!(split(&[text]), expected, "one delta: {text:?}");
        assert_eq!(split_chars(text), expected, "char by char: {text:?}");
        for (at, _) in text.char_indices().skip(1) {
            let (a, b) = text.split_at(at);
            assert_eq!(split(&[a, b]), expected, "deltas {a:?} + {b:?}");
        }
    }

    #[test]
    fn chinese_reply_first_segment_cut_on_comma() {
        assert_split_everywhere(
            "😊你好呀，今天天气不错。我们出去玩吧！好不好？",
            &["你好呀", "今天天气不错", "我们出去玩吧", "好不好？"],
        );
    }

    #[test]
    fn later_segments_ignore_commas() {
        assert_split_everywhere(
            "你好，我是小智。今天天气很好，适合出去玩。你想去哪里？",
            &["你好", "我是小智", "今天天气很好，适合出去玩", "你想去哪里？"],
        );
    }

    #[test]
    fn english_reply_with_emoji_and_decimal() {
        assert_split_everywhere(
            "😊 Sure, I can help. It is 3.5 degrees.",
            &["Sure", "I can help", "It is 3.5 degrees"],
        );
    }

    #[test]
    fn emitted_as_soon_as_complete() {
        let mut s = SentenceSplitter::new();
        assert_eq!(s.push("😊 Sure, I can "), ["Sure"]);
        assert_eq!(s.push("help."), Vec::<String>::new(), "a final '.' waits for the next delta");
        assert_eq!(s.push(" It is 3."), ["I can help"]);
        assert_eq!(s.push("5 degrees."), Vec::<String>::new());
        assert_eq!(s.finish().as_deref(), Some("It is 3.5 degrees"));
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn full_width_mark_cut_immediately() {
        let mut s = SentenceSplitter::new();
        assert_eq!(s.push("好的，我"), ["好的"]);
        assert_eq!(s.push("明白了。"), ["我明白了"]);
        assert_eq!(s.push("还有"), Vec::<String>::new());
        assert_eq!(s.push("吗？"), ["还有吗？"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn question_mark_across_chunks() {
        assert_eq!(split(&["Hello world.", " How are you?", " Fine"]), ["Hello world", "How are you?", "Fine"]);
        let mut s = SentenceSplitter::new();
        assert_eq!(s.push("Hello world."), Vec::<String>::new());
        assert_eq!(s.push(" How are you?"), ["Hello world"]);
        assert_eq!(s.push(" Fine"), ["How are you?"]);
        assert_eq!(s.finish().as_deref(), Some("Fine"));
    }

    #[test]
    fn numbers_times_and_urls_are_not_cut() {
        assert_split_everywhere("价格是1,000元，时间是10:30。", &["价格是1,000元", "时间是10:30"]);
        assert_split_everywhere(
            "Version 2.0.1 is out. See http://example.com now.",
            &["Version 2.0.1 is out", "See http://example.com now"],
        );
    }

    #[test]
    fn whole_reply_one_sentence() {
        assert_split_everywhere("今天天气很好", &["今天天气很好"]);
        assert_split_everywhere("The weather is nice today", &["The weather is nice today"]);
        let mut s = SentenceSplitter::new();
        assert!(s.push("今天天气很好").is_empty());
        assert_eq!(s.finish().as_deref(), Some("今天天气很好"));
    }

    #[test]
    fn markdown_list_reply() {
        assert_split_everywhere(
            "Here are the steps:\n1. Open the app.\n2. Tap **Settings**.\n- Done\n",
            &["Here are the steps", "Open the app", "Tap Settings", "Done"],
        );
        assert_split_everywhere(
            "## 步骤\n1. 打开应用\n2. 点击**设置**\n* 完成",
            &["步骤", "打开应用", "点击设置", "完成"],
        );
    }

    #[test]
    fn code_fences_are_not_spoken() {
        assert_split_everywhere("看代码：\n```python\nprint(1)\n```\n好了。", &["看代码", "print(1)", "好了"]);
    }

    #[test]
    fn short_first_segment_is_merged() {
        assert_split_everywhere("嗯，好的，我知道了。", &["嗯，好的", "我知道了"]);
        assert_split_everywhere("😊，你好。再见。", &["你好", "再见"]);
        assert_split_everywhere("I, for one, agree. Yes.", &["I, for one", "agree", "Yes"]);
        // A short segment later in the reply is spoken as is.
        assert_split_everywhere("我们走吧。好。", &["我们走吧", "好"]);
        // A short reply is still flushed.
        assert_split_everywhere("嗯。", &["嗯"]);
    }

    #[test]
    fn closing_quotes_stay_with_their_sentence() {
        assert_split_everywhere("他说：“你好。”然后走了。", &["他说", "你好", "然后走了"]);
        assert_split_everywhere("She said \"hi.\" Then left.", &["She said \"hi", "Then left"]);
    }

    #[test]
    fn never_emits_empty_segments() {
        assert_split_everywhere("。。。！！！", &[]);
        assert_split_everywhere("😊", &[]);
        assert_split_everywhere("好的。\n\n\n！？", &["好的"]);
        let mut s = SentenceSplitter::new();
        for d in ["😊", "，", "\n", "。", "！"] {
            assert!(s.push(d).iter().all(|seg| !seg.is_empty()));
        }
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn junk_prefix_is_dropped_not_spoken() {
        assert_split_everywhere("？，你好。", &["你好"]);
        assert_split_everywhere("😊，😊，嗯，😊，好的。", &["嗯，好的"]);
    }

    #[test]
    fn no_segment_is_longer_than_the_limit() {
        // The attack: 300 000 characters without punctuation in one piece (a tool's spoken
        // response) made one subtitle larger than the socket's write buffer.
        let words = "word ".repeat(60_000);
        let started = std::time::Instant::now();
        let mut s = SentenceSplitter::with_max_chars(300);
        let mut pieces = s.push(&words);
        pieces.extend(s.finish());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "linear, not quadratic: {:?}",
            started.elapsed()
        );
        assert!(pieces.iter().all(|p| p.chars().count() <= 300));
        assert!(pieces.iter().all(|p| p.ends_with("word")), "cut at spaces, not inside words");
        assert_eq!(pieces.join(" "), words.trim_end());
        // A long sentence that does end: cut into pieces, then the next sentence as usual.
        let text = format!("{}. Next one. ", "abc ".repeat(200));
        let mut s = SentenceSplitter::with_max_chars(100);
        let mut pieces = s.push(&text);
        pieces.extend(s.finish());
        assert!(pieces.iter().all(|p| p.chars().count() <= 100), "{pieces:?}");
        assert_eq!(pieces.last().map(String::as_str), Some("Next one"));
        // Without a space or a mark, a hard cut at the limit.
        let mut s = SentenceSplitter::with_max_chars(7);
        assert_eq!(s.push("abcdefghijklmnop"), ["abcdefg", "hijklmn"]);
        assert_eq!(s.finish().as_deref(), Some("op"));
    }

    #[test]
    fn cutting_text_says_how_much_was_cut() {
        assert_eq!(cut_chars("short", 10), "short");
        assert_eq!(cut_chars("好好好好好", 2), "好好… [3 more characters cut]");
        assert_eq!(cut_bytes("short", 10), "short");
        let long = "é".repeat(1000);
        let cut = cut_bytes(&long, 100);
        assert!(cut.len() <= 100, "{}", cut.len());
        assert!(cut.ends_with("bytes cut]"), "{cut}");
        assert!(cut_bytes("abcdef", 3).len() <= 3);
    }

    #[test]
    fn long_and_hostile_streams() {
        // A long reply without any boundary is cut into pieces of at most the segment length.
        let long = "很".repeat(20_000);
        let mut s = SentenceSplitter::new();
        let mut pieces = Vec::new();
        for _ in 0..20_000 {
            pieces.extend(s.push("很"));
        }
        pieces.extend(s.finish());
        assert!(pieces.iter().all(|p| p.chars().count() <= DEFAULT_MAX_SEGMENT_CHARS), "a piece is too long");
        assert_eq!(pieces.concat(), long, "nothing is lost");
        // Many one-letter first segments: merged up to the cap, then spoken.
        let mut s = SentenceSplitter::new();
        let out: Vec<String> = (0..2_000).flat_map(|_| s.push("嗯😊，")).collect();
        assert!(!out.is_empty());
        assert!(out.iter().all(|seg| !seg.is_empty()));
        // Alternating marks and dots across deltas never panic and never emit empty text.
        let mut s = SentenceSplitter::new();
        for d in [".", " ", "3", ".", "5", "。", "\n", "..", "?", "!", "a", ".", "\u{1F600}", "：", ":"] {
            assert!(s.push(d).iter().all(|seg| !seg.is_empty()));
        }
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn repeated_marks_are_one_boundary() {
        assert_split_everywhere("Really?! Yes... Okay.", &["Really?", "Yes", "Okay"]);
        assert_split_everywhere("真的吗？！当然。", &["真的吗？", "当然"]);
    }

    #[test]
    fn splitter_is_reusable_after_finish_and_reset() {
        let mut s = SentenceSplitter::new();
        assert_eq!(s.push("好的，我们走。"), ["好的", "我们走"]);
        assert_eq!(s.finish(), None);
        // The next reply's first segment is cut on commas again.
        assert_eq!(s.push("行，"), Vec::<String>::new());
        assert_eq!(s.push("没问题，"), ["行，没问题"]);
        s.reset();
        assert_eq!(s.push("可以，"), ["可以"]);
        assert_eq!(s.finish(), None);
    }

    #[test]
    fn english_colon_only_cuts_the_first_segment() {
        // ASCII ':' is in the first set only, like the Python server.
        assert_split_everywhere("Note: it works: really.", &["Note", "it works: really"]);
    }

    #[test]
    fn clean_strips_edges_and_keeps_inner_punctuation() {
        assert_eq!(clean_for_speech("  Hello, world!  "), "Hello, world");
        assert_eq!(clean_for_speech("“你好。”"), "你好");
        assert_eq!(clean_for_speech("【注意】：小心！"), "注意】：小心");
        assert_eq!(clean_for_speech("你好吗？"), "你好吗？");
        assert_eq!(clean_for_speech("-5 degrees."), "-5 degrees");
        assert_eq!(clean_for_speech("- -"), "");
        assert_eq!(clean_for_speech("!!!"), "");
        assert_eq!(clean_for_speech(""), "");
        assert_eq!(clean_for_speech("a\t\t b \n c"), "a b c");
    }

    #[test]
    fn clean_removes_emoji_everywhere() {
        assert_eq!(clean_for_speech("😊 Hi 👍🏽 there!"), "Hi there");
        assert_eq!(clean_for_speech("好的😊我们走"), "好的我们走");
        assert_eq!(clean_for_speech("👨‍👩‍👧 family ❤️"), "family");
        assert_eq!(clean_for_speech("☀️🌧"), "");
        assert_eq!(clean_for_speech("Hi 😊, there 😊 (friend)"), "Hi, there (friend)");
        assert_eq!(clean_for_speech("嗯，😊，好"), "嗯，好");
    }

    #[test]
    fn clean_removes_markdown() {
        assert_eq!(clean_for_speech("**bold** and __strong__ text"), "bold and strong text");
        assert_eq!(clean_for_speech("use `cargo build` now"), "use cargo build now");
        assert_eq!(clean_for_speech("### Title"), "Title");
        assert_eq!(clean_for_speech("- item one"), "item one");
        assert_eq!(clean_for_speech("* item two"), "item two");
        assert_eq!(clean_for_speech("12. item three"), "item three");
        assert_eq!(clean_for_speech("> quoted"), "quoted");
        assert_eq!(clean_for_speech("see [the docs](https://x.y/z?a=1) here"), "see the docs here");
        assert_eq!(clean_for_speech("![a cat](cat.png)"), "a cat");
        assert_eq!(clean_for_speech("这是*重要*的"), "这是重要的");
        assert_eq!(clean_for_speech("~~old~~ new"), "old new");
        assert_eq!(clean_for_speech("```rust"), "");
        assert_eq!(clean_for_speech("```\nlet x = 1;\n```"), "let x = 1");
        assert_eq!(clean_for_speech("line one\n\n- line two"), "line one line two");
        // Not Markdown: kept.
        assert_eq!(clean_for_speech("2*3 is 6, snake_case stays"), "2*3 is 6, snake_case stays");
        assert_eq!(clean_for_speech("[not a link] here"), "not a link] here");
        assert_eq!(clean_for_speech("3.5 degrees"), "3.5 degrees");
    }

    #[test]
    fn clean_survives_hostile_input() {
        let many_brackets = "[".repeat(5000) + "](";
        assert_eq!(clean_for_speech(&many_brackets), "");
        assert_eq!(clean_for_speech("*_`~[]()!*"), "");
        assert_eq!(clean_for_speech("？"), "");
        assert_eq!(clean_for_speech("a[b](c"), "a[b](c");
    }

    #[test]
    fn emotion_lookup() {
        assert_eq!(emotion_of("😂 太好笑了"), Some(("😂", "funny")));
        assert_eq!(emotion_of("好的🤔让我想想😂"), Some(("🤔", "thinking")));
        assert_eq!(emotion_of("😲"), Some(("😲", "surprised")));
        assert_eq!(emotion_of("😯"), Some(("😯", "surprised")));
        assert_eq!(emotion_of("😊 Sure"), Some(("😊", "happy")));
        assert_eq!(emotion_of("😁"), Some(("😁", "laughing")));
        assert_eq!(emotion_of("I ❤️ you"), Some(("❤️", "loving")));
        assert_eq!(emotion_of("🥰"), Some(("🥰", "loving")));
        assert_eq!(emotion_of("😢"), Some(("😢", "sad")));
        // Emoji without an emotion are skipped.
        assert_eq!(emotion_of("🌧 下雨了 😴"), Some(("😴", "sleepy")));
        assert_eq!(emotion_of("no emoji here"), None);
        assert_eq!(emotion_of(""), None);
        assert_eq!(emotion_of("🌧").unwrap_or(DEFAULT_EMOTION), ("🙂", "happy"));
    }

    #[test]
    fn every_firmware_emotion_is_reachable() {
        let names = [
            "neutral",
            "happy",
            "laughing",
            "funny",
            "sad",
            "angry",
            "crying",
            "loving",
            "embarrassed",
            "surprised",
            "shocked",
            "thinking",
            "winking",
            "cool",
            "relaxed",
            "delicious",
            "kissy",
            "confident",
            "sleepy",
            "silly",
            "confused",
        ];
        for name in names {
            let (c, emoji, _) =
                EMOTIONS.iter().find(|(_, _, n)| *n == name).copied().unwrap_or_else(|| panic!("{name} missing"));
            assert_eq!(emotion_of(emoji), Some((emoji, name)));
            assert!(is_emoji(c), "{emoji} must be recognised as an emoji");
        }
        for (c, emoji, name) in EMOTIONS {
            assert!(names.contains(name), "{name} is not a firmware emotion");
            assert!(emoji.starts_with(*c));
            assert!(is_emoji(*c), "{emoji} must be recognised as an emoji");
        }
    }

    #[test]
    fn command_normalization() {
        assert_eq!(normalize_command("退出。"), "退出");
        assert_eq!(normalize_command("Exit!"), "exit");
        assert_eq!(normalize_command(" Hi, Xiao Zhi 😊 "), "hixiaozhi");
        assert_eq!(normalize_command("【关闭】～！"), "关闭");
        assert_eq!(normalize_command("你好，小智…"), "你好小智");
        assert_eq!(normalize_command("ＯＫ　"), "ｏｋ");
        assert_eq!(normalize_command("नमस्ते!"), "नमस्ते");
        assert_eq!(normalize_command("。！？"), "");
    }

    #[test]
    fn command_matching() {
        let list = vec!["退出".to_string(), "关闭".to_string(), "exit".to_string()];
        assert!(matches_any("退出。", &list));
        assert!(matches_any("关闭！", &list));
        assert!(matches_any("Exit!", &list));
        assert!(matches_any(" EXIT ", &list));
        assert!(!matches_any("退出吧", &list));
        assert!(!matches_any("please exit", &list));
        assert!(!matches_any("。", &[String::new()]));
        assert!(!matches_any("退出", &[]));
        assert!(matches_any("Hey, Xiaozhi!", &["hey xiaozhi".to_string()]));
    }
    #[test]
    fn pending_is_the_sentence_being_written_and_never_the_next() {
        let mut splitter = SentenceSplitter::new();
        let first = splitter.push("Hello there, my friend");
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(splitter.pending(), "my friend");
        let mut splitter = SentenceSplitter::new();
        assert_eq!(splitter.push("Once upon a time there"), Vec::<String>::new());
        assert_eq!(splitter.pending(), "Once upon a time there");
        // A full stop that may be a decimal point waits for the next character: not handed out.
        assert_eq!(splitter.push(" was 3."), Vec::<String>::new());
        assert_eq!(splitter.pending(), "Once upon a time there was 3");
        assert_eq!(splitter.push("5 cats. And"), vec!["Once upon a time there was 3.5 cats".to_owned()]);
        assert_eq!(splitter.pending(), "And");
        assert_eq!(splitter.finish().as_deref(), Some("And"));
        assert_eq!(splitter.pending(), "");
    }
}
