//! Configuration errors that always say where: file, line and field.
//!
//! An operator who gets "invalid value" without a location has to bisect a file by hand at
//! 3 a.m.; every error produced while loading configuration, zones or profiles therefore
//! carries the file, the 1-based line and the dotted field path (`server.udp`) it refers to.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found while loading configuration or zone data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// File the problem is in (as given, or as found in the zones directory).
    pub file: PathBuf,
    /// 1-based line, 0 when the problem concerns the file as a whole.
    pub line: usize,
    /// Dotted field path (`server.udp`), record (`www.example.test. A`) or `-`.
    pub field: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl ConfigError {
    /// An error with an explicit location.
    pub fn new(
        file: impl Into<PathBuf>,
        line: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            file: file.into(),
            line,
            field: field.into(),
            message: message.into(),
        }
    }

    /// An error about a file as a whole (missing, unreadable, empty directory).
    pub fn file(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::new(file, 0, "-", message)
    }

    /// Converts a `toml` deserialisation error into one that names line and field.
    ///
    /// `toml` reports a byte span; the field is recovered from the text so the message reads
    /// `geosteer.toml:4: server.udp: invalid socket address syntax` instead of a bare span.
    pub fn from_toml(file: &Path, text: &str, err: &toml::de::Error) -> Self {
        let span = err.span().unwrap_or(0..0);
        let line = line_of_offset(text, span.start);
        let field = field_at(text, &span).unwrap_or_else(|| "-".to_string());
        // toml's message is multi-line with a caret diagram; keep only the first sentence.
        let message = err
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .trim();
        Self::new(file, line, field, message)
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        if self.line > 0 {
            write!(f, "{file}:{}: {}: {}", self.line, self.field, self.message)
        } else {
            write!(f, "{file}: {}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Several errors from one load; `check` prints them all rather than stopping at the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// 1-based line number of a byte offset.
pub fn line_of_offset(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Dotted path of the key whose key or value covers `span`: the nearest `[table]` header above
/// plus the key on the span's line (`server.udp`). Good enough for the flat files we ship.
fn field_at(text: &str, span: &Range<usize>) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let mut table = None;
    for l in text[..line_start].lines().rev() {
        let t = l.trim();
        if t.starts_with('[') {
            table = Some(t.trim_matches(|c| c == '[' || c == ']').trim().to_string());
            break;
        }
    }
    let trimmed = line.trim();
    let key = if trimmed.starts_with('[') {
        None
    } else {
        trimmed
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
    };
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_path_comes_from_table_and_key() {
        let text = "[server]\nworkers = 2\nudp = [\"x\"]\n";
        let off = text.find("[\"x\"]").unwrap();
        assert_eq!(line_of_offset(text, off), 3);
        assert_eq!(
            field_at(text, &(off..off + 5)).as_deref(),
            Some("server.udp")
        );
    }

    #[test]
    fn display_names_file_line_field() {
        let e = ConfigError::new("a.toml", 3, "server.udp", "bad");
        assert_eq!(e.to_string(), "a.toml:3: server.udp: bad");
        let e = ConfigError::file("zones", "no zone files");
        assert_eq!(e.to_string(), "zones: -: no zone files");
    }
}
