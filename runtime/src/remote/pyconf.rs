//! Settings as the Python server reads them: its `config.yaml` writes numbers as numbers or as
//! strings (`top_k: 5`, `top_k: "5"`), leaves keys empty to mean "the default" (`seed:`), writes
//! booleans as `true`, `"true"`, `"yes"` or `1`, and lists as YAML lists or `a;b` strings. These
//! deserializers accept what the Python providers accept, so an entry carries over unchanged.

use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// A YAML scalar or list, as the deserializers below take it.
#[derive(Deserialize)]
#[serde(untagged)]
enum Loose {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    List(Vec<Value>),
}

/// A number written as a number or a string; null or an empty string is `None` (the Python
/// providers' `float(x) if x else default`).
pub(crate) fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    match Option::<Loose>::deserialize(d)? {
        None => Ok(None),
        Some(Loose::Int(n)) => Ok(Some(n as f64)),
        Some(Loose::Float(n)) => Ok(Some(n)),
        Some(Loose::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(Loose::Text(text)) => {
            text.trim().parse().map(Some).map_err(|_| serde::de::Error::custom(format!("`{text}` is not a number")))
        }
        Some(Loose::Bool(_)) | Some(Loose::List(_)) => Err(serde::de::Error::custom("expected a number")),
    }
}

/// A whole number written as a number or a string; null or an empty string is `None`.
pub(crate) fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Loose>::deserialize(d)? {
        None => Ok(None),
        Some(Loose::Int(n)) => Ok(Some(n)),
        Some(Loose::Float(n)) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(Some(n as i64)),
        Some(Loose::Text(text)) if text.trim().is_empty() => Ok(None),
        Some(Loose::Text(text)) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("`{text}` is not a whole number"))),
        Some(_) => Err(serde::de::Error::custom("expected a whole number")),
    }
}

/// A boolean as Python's `str(x).lower() in ("true", "1", "yes")`: anything else (null included)
/// is false.
pub(crate) fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(match Option::<Loose>::deserialize(d)? {
        None => false,
        Some(Loose::Bool(b)) => b,
        Some(Loose::Int(n)) => n == 1,
        Some(Loose::Float(n)) => n == 1.0,
        Some(Loose::Text(text)) => matches!(text.trim().to_ascii_lowercase().as_str(), "true" | "1" | "yes"),
        Some(Loose::List(_)) => false,
    })
}

/// A list of strings: a YAML list, or one string split at `;` (the Python server's
/// `parse_string_to_list`); null or an empty string is empty.
pub(crate) fn str_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Ok(match Option::<Loose>::deserialize(d)? {
        None => Vec::new(),
        Some(Loose::Text(text)) => {
            text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
        }
        Some(Loose::List(items)) => items
            .into_iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s),
                Value::Null => None,
                other => Some(other.to_string()),
            })
            .collect(),
        Some(Loose::Int(n)) => vec![n.to_string()],
        Some(Loose::Float(n)) => vec![n.to_string()],
        Some(Loose::Bool(b)) => vec![b.to_string()],
    })
}

/// A string that YAML may have read as a number (`voice: 101001`) or left empty (null).
pub(crate) fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(match Option::<Loose>::deserialize(d)? {
        None => String::new(),
        Some(Loose::Text(text)) => text,
        Some(Loose::Int(n)) => n.to_string(),
        Some(Loose::Float(n)) => n.to_string(),
        Some(Loose::Bool(b)) => b.to_string(),
        Some(Loose::List(_)) => return Err(serde::de::Error::custom("expected a string, not a list")),
    })
}

/// A float as Python's `str(float)` writes it: `1.0`, `0.75`, `1.35` (for query strings that
/// mirror the Python providers' requests).
pub(crate) fn py_float(value: f64) -> String {
    if value.is_finite() && value.fract() == 0.0 && value.abs() < 1e16 {
        format!("{value:.1}")
    } else {
        value.to_string()
    }
}

/// Checks that every key of the Python server's `config.yaml` (v0.9.6) entry `section.name`
/// deserializes into `T` with none left unknown (its `type` aside), and returns it.
#[cfg(test)]
pub(crate) fn python_entry<T: serde::de::DeserializeOwned>(section: &str, name: &str) -> T {
    let python: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(include_str!("../../../tests/assets/python-v0.9.6-config.yaml"))
            .expect("the Python file");
    let mut entry = python[section][name].clone();
    let map = entry.as_mapping_mut().expect("the entry");
    map.remove("type");
    let mut unknown = Vec::new();
    let parsed = serde_ignored::deserialize(entry, |path| unknown.push(path.to_string())).expect("the entry parses");
    assert!(unknown.is_empty(), "{section}.{name}: unknown keys {unknown:?}");
    parsed
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, Default)]
    #[serde(default)]
    struct Sample {
        #[serde(deserialize_with = "super::opt_f64")]
        f: Option<f64>,
        #[serde(deserialize_with = "super::opt_i64")]
        i: Option<i64>,
        #[serde(deserialize_with = "super::flag")]
        b: bool,
        #[serde(deserialize_with = "super::str_list")]
        l: Vec<String>,
        #[serde(deserialize_with = "super::text")]
        t: String,
    }

    fn parse(yaml: &str) -> Result<Sample, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(yaml)
    }

    #[test]
    fn python_style_values() {
        let s = parse("f: \"0.75\"\ni: '5'\nb: \"Yes\"\nl: \"a.wav; b.wav;\"\nt: 101001").expect("valid");
        assert_eq!((s.f, s.i, s.b, s.t.as_str()), (Some(0.75), Some(5), true, "101001"));
        assert_eq!(s.l, ["a.wav", "b.wav"]);
        let s = parse("f: 1\ni: 2.0\nb: 1\nl: [x, y]\nt: abc").expect("valid");
        assert_eq!((s.f, s.i, s.b), (Some(1.0), Some(2), true));
        assert_eq!(s.l, ["x", "y"]);
        let s = parse("f: \"\"\ni:\nb:\nl:\nt:").expect("valid");
        assert_eq!((s.f, s.i, s.b, s.l.len(), s.t.as_str()), (None, None, false, 0, ""));
        let s = parse("b: \"false\"").expect("valid");
        assert!(!s.b);
        assert!(parse("f: fast").is_err());
        assert!(parse("i: 1.5").is_err());
    }

    #[test]
    fn floats_as_python_writes_them() {
        assert_eq!(super::py_float(1.0), "1.0");
        assert_eq!(super::py_float(0.75), "0.75");
        assert_eq!(super::py_float(32.0), "32.0");
        assert_eq!(super::py_float(-1.0), "-1.0");
    }
}
