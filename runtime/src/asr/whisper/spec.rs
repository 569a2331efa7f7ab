//! What a Whisper model folder says about itself: dimensions (`config.json`) and the special
//! token ids and suppress lists (`generation_config.json`, then `config.json`, then
//! `added_tokens.json` and `tokenizer.json` as fallbacks). Nothing here is hard-coded per model.

use std::path::Path;

use serde_json::Value;

use super::tokenizer::Tokenizer;

/// The decoder's shape, from `config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// Mel bands of the input features.
    pub n_mels: usize,
    /// Decoder layers (one decoder and one encoder key/value pair each).
    pub layers: usize,
    /// Attention heads of the decoder.
    pub heads: usize,
    /// Size of one head (`d_model / heads`).
    pub head_dim: usize,
    /// Most decoder positions (prompt included).
    pub max_positions: usize,
    /// Vocabulary size (the width of `logits`).
    pub vocab_size: usize,
}

/// The special token ids and suppress lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecialTokens {
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|endoftext|>`: the end of the transcript; it and the ids above are control tokens.
    pub eot: u32,
    /// `<|notimestamps|>`; ids above it are timestamps and never chosen.
    pub no_timestamps: u32,
    /// `<|nospeech|>` (`<|nocaptions|>` in older vocabularies), if there is one.
    pub no_speech: Option<u32>,
    /// `<|transcribe|>` (multilingual models).
    pub transcribe: Option<u32>,
    /// `<|translate|>` (multilingual models).
    pub translate: Option<u32>,
    /// Language codes (`en`, `de`, ...) and their token ids, by id (multilingual models).
    pub languages: Vec<(String, u32)>,
    /// Whether the model takes language and task tokens.
    pub multilingual: bool,
    /// Never chosen.
    pub suppress: Vec<u32>,
    /// Never chosen as the first generated token.
    pub begin_suppress: Vec<u32>,
}

/// Everything read from a model folder's JSON files.
#[derive(Debug)]
pub struct ModelFolder {
    /// The decoder's shape.
    pub dims: Dims,
    /// Ids → text.
    pub tokenizer: Tokenizer,
    /// The special ids and suppress lists.
    pub tokens: SpecialTokens,
}

impl ModelFolder {
    /// Reads `config.json` and `tokenizer.json` (required), `generation_config.json` and
    /// `added_tokens.json` (optional). Errors name the file.
    pub fn read(dir: &Path) -> Result<Self, String> {
        let required = |name: &str| -> Result<Value, String> {
            let path = dir.join(name);
            read_json(&path)?.ok_or_else(|| format!("{} is missing", path.display()))
        };
        let config = required("config.json")?;
        let generation = read_json(&dir.join("generation_config.json"))?;
        let added = read_json(&dir.join("added_tokens.json"))?;
        let dims = Dims::from_config(&config)?;
        let eot = id_field(generation.as_ref(), "eos_token_id")
            .or_else(|| id_field(Some(&config), "eos_token_id"))
            .ok_or("no eos_token_id in generation_config.json or config.json")?;
        let tokenizer_path = dir.join("tokenizer.json");
        if !tokenizer_path.is_file() {
            return Err(format!("{} is missing", tokenizer_path.display()));
        }
        let tokenizer = Tokenizer::load(&tokenizer_path, eot)?;
        let tokens = SpecialTokens::resolve(generation.as_ref(), &config, added.as_ref(), &tokenizer, &dims)?;
        Ok(Self { dims, tokenizer, tokens })
    }
}

/// Reads a JSON file; `None` when it does not exist.
pub fn read_json(path: &Path) -> Result<Option<Value>, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A non-negative integer field (a list gives its first element, as `eos_token_id` may be one).
fn id_field(json: Option<&Value>, key: &str) -> Option<u32> {
    let value = json?.get(key)?;
    let value = match value {
        Value::Array(items) => items.first()?,
        other => other,
    };
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

/// A list of token ids; `None` when absent or `null`.
fn id_list(json: Option<&Value>, key: &str) -> Option<Vec<u32>> {
    let items = json?.get(key)?.as_array()?;
    Some(items.iter().filter_map(|v| v.as_u64().and_then(|v| u32::try_from(v).ok())).collect())
}

/// A positive size field of `config.json`.
fn size_field(config: &Value, key: &str) -> Result<usize, String> {
    config
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|v| usize::try_from(v).ok())
        .filter(|&v| v > 0)
        .ok_or_else(|| format!("config.json has no positive `{key}`"))
}

impl Dims {
    /// Reads the dimensions from `config.json`.
    pub fn from_config(config: &Value) -> Result<Self, String> {
        let d_model = size_field(config, "d_model")?;
        let heads = size_field(config, "decoder_attention_heads")?;
        if d_model % heads != 0 {
            return Err(format!("config.json: d_model {d_model} is not a multiple of {heads} heads"));
        }
        Ok(Self {
            n_mels: size_field(config, "num_mel_bins")?,
            layers: size_field(config, "decoder_layers")?,
            heads,
            head_dim: d_model / heads,
            max_positions: size_field(config, "max_target_positions").unwrap_or(448),
            vocab_size: size_field(config, "vocab_size")?,
        })
    }
}

impl SpecialTokens {
    /// Resolves the ids from the generation config, the model config, `added_tokens.json` and
    /// the tokenizer, in that order of preference.
    pub fn resolve(
        generation: Option<&Value>,
        config: &Value,
        added: Option<&Value>,
        tokenizer: &Tokenizer,
        dims: &Dims,
    ) -> Result<Self, String> {
        let by_name = |name: &str| {
            id_field(added, name).or_else(|| tokenizer.id_of(name)).ok_or_else(|| format!("no token `{name}` found"))
        };
        let first = |key: &str| id_field(generation, key).or_else(|| id_field(Some(config), key));
        let sot = match first("decoder_start_token_id") {
            Some(id) => id,
            None => by_name("<|startoftranscript|>")?,
        };
        let eot = match first("eos_token_id") {
            Some(id) => id,
            None => by_name("<|endoftext|>")?,
        };
        let no_timestamps = match id_field(generation, "no_timestamps_token_id") {
            Some(id) => id,
            None => by_name("<|notimestamps|>")?,
        };
        let no_speech = by_name("<|nospeech|>").or_else(|_| by_name("<|nocaptions|>")).ok();
        // OpenAI's rule when the config does not say: multilingual vocabularies have 51 865+ ids.
        let multilingual = generation
            .and_then(|g| g.get("is_multilingual"))
            .and_then(Value::as_bool)
            .unwrap_or(dims.vocab_size >= 51_865);

        let tasks = generation.and_then(|g| g.get("task_to_id"));
        let task = |name: &str| id_field(tasks, name).or_else(|| by_name(&format!("<|{name}|>")).ok());
        let (transcribe, translate) = (task("transcribe"), task("translate"));

        let mut languages: Vec<(String, u32)> = Vec::new();
        if multilingual {
            match generation.and_then(|g| g.get("lang_to_id")).and_then(Value::as_object) {
                Some(map) => {
                    for (token, id) in map {
                        let code = token.trim_start_matches("<|").trim_end_matches("|>");
                        if let Some(id) = id.as_u64().and_then(|v| u32::try_from(v).ok()) {
                            languages.push((code.to_string(), id));
                        }
                    }
                }
                None => {
                    // The language tokens sit between <|startoftranscript|> and <|translate|>.
                    let end = translate.ok_or("no `lang_to_id` and no <|translate|> token to bound the languages")?;
                    if let Some(Value::Object(map)) = added {
                        for (token, id) in map {
                            let id = id.as_u64().and_then(|v| u32::try_from(v).ok());
                            let code = token.strip_prefix("<|").and_then(|t| t.strip_suffix("|>"));
                            if let (Some(id), Some(code)) = (id, code)
                                && id > sot
                                && id < end
                            {
                                languages.push((code.to_string(), id));
                            }
                        }
                    }
                }
            }
            languages.sort_by_key(|(_, id)| *id);
            if languages.is_empty() {
                return Err("a multilingual model without language tokens".into());
            }
            if transcribe.is_none() {
                return Err("a multilingual model without a <|transcribe|> token".into());
            }
        }

        let suppress = id_list(generation, "suppress_tokens")
            .or_else(|| id_list(Some(config), "suppress_tokens"))
            .unwrap_or_default();
        let begin_suppress = id_list(generation, "begin_suppress_tokens")
            .or_else(|| id_list(Some(config), "begin_suppress_tokens"))
            // OpenAI's default: a lone space (byte-level "Ġ") and the end of text.
            .unwrap_or_else(|| tokenizer.id_of("Ġ").into_iter().chain([eot]).collect());
        Ok(Self {
            sot,
            eot,
            no_timestamps,
            no_speech,
            transcribe,
            translate,
            languages,
            multilingual,
            suppress,
            begin_suppress,
        })
    }

    /// The token id of a language code (`de`, or `<|de|>`), case-insensitive.
    pub fn language(&self, code: &str) -> Option<u32> {
        let code = code.trim().trim_start_matches("<|").trim_end_matches("|>").to_ascii_lowercase();
        self.languages.iter().find(|(c, _)| *c == code).map(|(_, id)| *id)
    }

    /// The language code of a token id.
    pub fn language_code(&self, id: u32) -> Option<&str> {
        self.languages.iter().find(|(_, i)| *i == id).map(|(c, _)| c.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(model: &str) -> std::path::PathBuf {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models").join(model);
        assert!(dir.is_dir(), "{} is needed by this test (the shared Whisper models)", dir.display());
        dir
    }

    fn resolve(model: &str) -> (Dims, SpecialTokens) {
        let folder = ModelFolder::read(&folder(model)).unwrap();
        (folder.dims, folder.tokens)
    }

    #[test]
    fn tiny_en_ids_match_its_readme() {
        let (dims, t) = resolve("whisper-tiny-en");
        assert_eq!(dims, Dims { n_mels: 80, layers: 4, heads: 6, head_dim: 64, max_positions: 448, vocab_size: 51864 });
        assert_eq!((t.sot, t.eot, t.no_timestamps, t.no_speech), (50257, 50256, 50362, Some(50361)));
        assert!(!t.multilingual);
        assert!(t.languages.is_empty());
        assert_eq!(t.begin_suppress, vec![220, 50256]);
        assert_eq!(t.suppress.len(), 90);
    }

    #[test]
    fn base_ids_match_its_readme() {
        let (dims, t) = resolve("whisper-base");
        assert_eq!(dims, Dims { n_mels: 80, layers: 6, heads: 8, head_dim: 64, max_positions: 448, vocab_size: 51865 });
        assert_eq!((t.sot, t.eot, t.no_timestamps, t.no_speech), (50258, 50257, 50363, Some(50362)));
        assert!(t.multilingual);
        assert_eq!((t.transcribe, t.translate), (Some(50359), Some(50358)));
        assert_eq!(t.languages.len(), 99);
        assert_eq!(t.language("de"), Some(50261));
        assert_eq!(t.language("<|EN|>"), Some(50259));
        assert_eq!(t.language("xx"), None);
        assert_eq!(t.language_code(50260), Some("zh"));
        assert_eq!(t.begin_suppress, vec![220, 50257]);
    }

    #[test]
    fn fallbacks_without_a_generation_config() {
        // Only config.json and added_tokens.json: ids by name, languages bounded by the tokens.
        let (dims, from_generation) = resolve("whisper-base");
        let dir = folder("whisper-base");
        let mut config = read_json(&dir.join("config.json")).unwrap().unwrap();
        config["begin_suppress_tokens"] = Value::Null;
        let added = read_json(&dir.join("added_tokens.json")).unwrap();
        let tokenizer = Tokenizer::load(&dir.join("tokenizer.json"), 50257).unwrap();
        let t = SpecialTokens::resolve(None, &config, added.as_ref(), &tokenizer, &dims).unwrap();
        assert_eq!(t.languages, from_generation.languages);
        assert_eq!((t.sot, t.eot, t.no_timestamps), (50258, 50257, 50363));
        assert_eq!(t.begin_suppress, vec![220, 50257]);
        assert!(t.suppress.is_empty());
        assert!(Dims::from_config(&serde_json::json!({"d_model": 384})).is_err());
        // A folder without config.json names it.
        let empty = tempfile::tempdir().unwrap();
        let err = ModelFolder::read(empty.path()).unwrap_err();
        assert!(err.contains("config.json is missing"), "{err}");
    }
}
