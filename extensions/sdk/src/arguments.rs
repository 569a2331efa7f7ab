//! A tool's arguments: the JSON object the LLM wrote, with typed getters.

use serde_json::{Map, Value};

use crate::ExtensionError;

/// The arguments of one call (a JSON object; keys the schema does not know are kept).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Arguments(Map<String, Value>);

impl Arguments {
    /// Parses the arguments text: a JSON object, or empty text or `null` for none.
    pub fn parse(text: &str) -> Result<Self, ExtensionError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        match serde_json::from_str(text) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(Value::Null) => Ok(Self::default()),
            Ok(_) => Err(ExtensionError::InvalidArguments("the arguments are not a JSON object".into())),
            Err(err) => Err(ExtensionError::InvalidArguments(format!("the arguments are not JSON: {err}"))),
        }
    }

    /// A string argument, trimmed; `None` when missing, not a string or blank.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str).map(str::trim).filter(|s| !s.is_empty())
    }

    /// A whole-number argument (also written as a string, as models sometimes do).
    pub fn int(&self, key: &str) -> Option<i64> {
        match self.0.get(key)? {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// A boolean argument (also `"true"`/`"false"`).
    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.0.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Any argument as JSON.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }

    /// The arguments as JSON object text.
    pub fn to_json(&self) -> String {
        Value::Object(self.0.clone()).to_string()
    }

    /// A string argument that must be given.
    pub fn required(&self, key: &str) -> Result<&str, ExtensionError> {
        self.str(key).ok_or_else(|| ExtensionError::InvalidArguments(format!("{key} is missing")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn getters_are_forgiving_and_errors_clear() {
        let args = Arguments::parse(r#"{"song":" Blue ","n":"3","flag":true,"blank":"  "}"#).expect("object");
        assert_eq!(args.str("song"), Some("Blue"));
        assert_eq!(args.int("n"), Some(3));
        assert_eq!(args.bool("flag"), Some(true));
        assert_eq!(args.str("blank"), None);
        assert!(
            matches!(args.required("missing"), Err(ExtensionError::InvalidArguments(m)) if m == "missing is missing")
        );
        assert_eq!(Arguments::parse("  ").expect("empty"), Arguments::default());
        assert!(matches!(Arguments::parse("[1]"), Err(ExtensionError::InvalidArguments(_))));
        assert!(matches!(Arguments::parse("{"), Err(ExtensionError::InvalidArguments(_))));
    }
}
