//! Firmware images in `<data_dir>/bin`: choosing the upgrade to offer, and serving the download.
//!
//! Images are named `{model}_{version}.bin` (the Python server's layout), where `model` is the
//! firmware's `board.type` and `version` a dotted numeric version such as `2.4.3`.

use std::cmp::Ordering;
use std::path::{Path, PathBuf};

/// Longest accepted image file name.
const MAX_NAME_LEN: usize = 255;

/// Whether `name` may be served: a plain file name of `[A-Za-z0-9._-]` ending in `.bin`, not
/// starting with a dot and without `..` (so no path separators, no parent references, and no
/// percent-encoded tricks, since `%` is not allowed).
pub fn is_valid_image_name(name: &str) -> bool {
    name.len() > ".bin".len()
        && name.len() <= MAX_NAME_LEN
        && name.ends_with(".bin")
        && !name.starts_with('.')
        && !name.contains("..")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a version the way the firmware does (`ota.cc`): dot-separated parts, each read as its
/// leading decimal digits (no digits reads as 0).
pub fn parse_version(version: &str) -> Vec<u64> {
    version
        .trim()
        .split('.')
        .map(|part| {
            let digits: String = part.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().unwrap_or(if digits.is_empty() { 0 } else { u64::MAX })
        })
        .collect()
}

/// Compares two versions like the firmware: part by part, and when one is a prefix of the other,
/// the longer one is newer (`1.0.1 > 1.0`).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    parse_version(a).cmp(&parse_version(b))
}

/// A version offered from a file name: only plain dotted numbers (`2.4.3`), so the firmware parses
/// it exactly as we compared it.
fn is_strict_version(version: &str) -> bool {
    !version.is_empty() && version.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The newest image for `model` strictly newer than `current`, as `(version, file name)`, from the
/// files in `bin_dir`. A missing or unreadable directory offers nothing.
pub fn newest_image(bin_dir: &Path, model: &str, current: &str) -> Option<(String, String)> {
    let prefix = format!("{model}_");
    let entries = std::fs::read_dir(bin_dir).ok()?;
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| is_valid_image_name(name))
        .filter_map(|name| {
            let version = name.strip_prefix(&prefix)?.strip_suffix(".bin")?;
            is_strict_version(version).then(|| (version.to_string(), name.clone()))
        })
        .filter(|(version, _)| compare_versions(version, current) == Ordering::Greater)
        .max_by(|(a, _), (b, _)| compare_versions(a, b))
}

/// The model and version an image name offers (`{model}_{version}.bin`, a dotted numeric
/// version), if it is one OTA can offer.
pub fn model_and_version(name: &str) -> Option<(&str, &str)> {
    if !is_valid_image_name(name) {
        return None;
    }
    let (model, version) = name.strip_suffix(".bin")?.rsplit_once('_')?;
    (!model.is_empty() && is_strict_version(version)).then_some((model, version))
}

/// The images in `bin_dir` OTA can offer: name and size, by name.
pub fn images(bin_dir: &Path) -> Vec<(String, u64)> {
    let Ok(entries) = std::fs::read_dir(bin_dir) else { return Vec::new() };
    let mut out: Vec<(String, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
            let name = e.file_name().into_string().ok()?;
            model_and_version(&name).is_some().then_some((name, meta.len()))
        })
        .collect();
    out.sort();
    out
}

/// Why an image cannot be served.
#[derive(Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The name is not an acceptable image file name (400).
    BadName,
    /// No such image (404).
    NotFound,
}

/// The path of image `name` inside `bin_dir`, after checking the name and that the canonical path
/// is a regular file that stays inside the canonical `bin_dir` (symbolic links pointing outside
/// are refused).
pub fn resolve_image(bin_dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    if !is_valid_image_name(name) {
        return Err(ImageError::BadName);
    }
    let root = bin_dir.canonicalize().map_err(|_| ImageError::NotFound)?;
    let path = root.join(name).canonicalize().map_err(|_| ImageError::NotFound)?;
    if !path.starts_with(&root) || !path.is_file() {
        return Err(ImageError::NotFound);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_give_model_and_version() {
        assert_eq!(model_and_version("bread-compact-wifi_2.4.3.bin"), Some(("bread-compact-wifi", "2.4.3")));
        assert_eq!(model_and_version("a_b_1.0.bin"), Some(("a_b", "1.0")));
        for bad in ["a.bin", "_1.0.bin", "a_1.x.bin", "a_1.0.txt", "../a_1.0.bin"] {
            assert_eq!(model_and_version(bad), None, "{bad}");
        }
    }

    #[test]
    fn validates_names() {
        for good in ["bread-compact-wifi_2.4.3.bin", "a.bin", "A_b-1.0.bin"] {
            assert!(is_valid_image_name(good), "{good}");
        }
        for bad in [
            "",
            ".bin",
            "../x.bin",
            "..bin",
            "a/b.bin",
            "a\\b.bin",
            "%2e%2e.bin",
            "x.bin.txt",
            ".hidden.bin",
            "a b.bin",
        ] {
            assert!(!is_valid_image_name(bad), "{bad}");
        }
        assert!(!is_valid_image_name(&format!("{}.bin", "a".repeat(MAX_NAME_LEN))));
    }

    #[test]
    fn compares_like_the_firmware() {
        assert_eq!(compare_versions("2.4.10", "2.4.9"), Ordering::Greater);
        assert_eq!(compare_versions("1.0.1", "1.0"), Ordering::Greater);
        assert_eq!(compare_versions("1.0", "1.0"), Ordering::Equal);
        assert_eq!(compare_versions("1.9", "1.10"), Ordering::Less);
        assert_eq!(compare_versions("2.0.0-beta", "2.0.0"), Ordering::Equal);
        assert_eq!(parse_version("x.3"), vec![0, 3]);
    }

    #[test]
    fn picks_the_newest_newer_image_of_the_model() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "board-a_1.0.0.bin",
            "board-a_1.2.0.bin",
            "board-a_1.10.0.bin",
            "board-a_9.0.0-rc.bin",
            "board-a_extra_3.0.0.bin",
            "board-b_5.0.0.bin",
            "notes.txt",
        ] {
            std::fs::write(dir.path().join(name), b"fw").unwrap();
        }
        std::fs::create_dir(dir.path().join("board-a_7.0.0.bin")).unwrap();
        assert_eq!(
            newest_image(dir.path(), "board-a", "1.1.0"),
            Some(("1.10.0".to_string(), "board-a_1.10.0.bin".to_string()))
        );
        assert_eq!(newest_image(dir.path(), "board-a", "1.10.0"), None);
        assert_eq!(
            newest_image(dir.path(), "board-a_extra", "0"),
            Some(("3.0.0".into(), "board-a_extra_3.0.0.bin".into()))
        );
        assert_eq!(newest_image(&dir.path().join("missing"), "board-a", "0"), None);
    }

    #[test]
    fn resolves_only_files_inside_the_directory() {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(bin.join("a_1.0.bin"), b"fw").unwrap();
        std::fs::write(root.path().join("secret.bin"), b"no").unwrap();
        assert!(resolve_image(&bin, "a_1.0.bin").unwrap().ends_with("a_1.0.bin"));
        assert_eq!(resolve_image(&bin, "../secret.bin"), Err(ImageError::BadName));
        assert_eq!(resolve_image(&bin, "b.bin"), Err(ImageError::NotFound));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(root.path().join("secret.bin"), bin.join("link.bin")).unwrap();
            assert_eq!(resolve_image(&bin, "link.bin"), Err(ImageError::NotFound));
        }
    }
}
