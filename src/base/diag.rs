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
    /// `geosteer.toml:4: server.udp: "127.0.0.1" has no port (…)` instead of a bare span.
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
        let message = match did_you_mean(message) {
            // Right after the unknown word, before serde's (long) list of expected ones.
            Some(best) => message.replacen(
                ", expected",
                &format!(" (did you mean `{best}`?), expected"),
                1,
            ),
            None => message.to_string(),
        };
        // Two syntax errors toml reports where it notices them rather than where they are.
        if let Some((open_line, key)) = unclosed_array_before(text, span.start)
            && (message.starts_with("missing comma between array elements")
                || message.starts_with("unclosed array"))
        {
            let field = field_at(
                text,
                &(line_start_of(text, open_line)..line_start_of(text, open_line)),
            )
            .unwrap_or(key);
            return Self::new(
                file,
                open_line,
                field,
                format!(
                    "this array is not closed (missing `]`?); TOML noticed at line {line}: {message}"
                ),
            );
        }
        if value_is_missing(text, span.start) {
            return Self::new(file, line, field, "no value after `=`");
        }
        Self::new(file, line, field, message)
    }
}

/// Most problems one file reports (a file of nothing but typos still ends in reasonable time:
/// each round is one parse of the file).
const MAX_ERRORS_PER_FILE: usize = 100;

/// Deserialises a TOML file reporting *every* problem serde finds, not only the first.
///
/// serde stops at the first unknown field or bad value. To find the next one, the offending
/// lines are blanked out (replaced by spaces, so every byte offset and line number stays where it
/// was) and the file is parsed again: a `key = value` line (extended over the following lines
/// until the file is valid TOML again, for values spanning lines), or a whole table (header and
/// body) when the problem is the table itself (an unknown `[table]`, a missing required field).
/// A "missing field" error in a table where a line was already blanked is a consequence of that,
/// not a problem of its own, and is not reported. A syntax error stops the search: where the file
/// is not TOML, what follows cannot be read reliably.
///
/// Returns the value parsed from the file with the bad lines blanked (`None` when no such parse
/// succeeded), so later checks can still report their problems, and the errors in file order.
pub fn from_toml_all<T: serde::de::DeserializeOwned>(
    file: &Path,
    text: &str,
) -> (Option<T>, Vec<ConfigError>) {
    let mut masked = text.to_string();
    let mut blanked: Vec<usize> = Vec::new();
    let mut errors = Vec::new();
    for _ in 0..MAX_ERRORS_PER_FILE {
        let err = match toml::from_str::<T>(&masked) {
            Ok(v) => {
                errors.sort_by_key(|e: &ConfigError| e.line);
                return (Some(v), errors);
            }
            Err(e) => e,
        };
        let reported = ConfigError::from_toml(file, &masked, &err);
        let syntax = toml::from_str::<toml::Table>(&masked).is_err();
        let Some(span) = err.span().filter(|_| !syntax) else {
            errors.push(reported);
            break;
        };
        let line = line_of_offset(&masked, span.start);
        let lines: Vec<&str> = masked.lines().collect();
        let is_header = |l: &str| l.trim_start().starts_with('[');
        // The table the error is in: its header line (1-based; 0 = the root) and its last line.
        let header = (1..=line)
            .rev()
            .find(|&n| lines.get(n - 1).is_some_and(|l| is_header(l)))
            .unwrap_or(0);
        let table_end = (line + 1..=lines.len())
            .find(|&n| is_header(lines[n - 1]))
            .map_or(lines.len(), |n| n - 1);
        let consequence = err.message().starts_with("missing field")
            && blanked
                .iter()
                .any(|&b| b >= header.max(1) && b <= table_end);
        if !consequence && !errors.contains(&reported) {
            errors.push(reported);
        }
        let on_header = lines.get(line - 1).is_some_and(|l| is_header(l));
        let range = if on_header || err.message().starts_with("missing field") {
            // The table with its sub-tables (`[[profile]]` with its `[profile.monitor]` and
            // `[[profile.endpoint]]`s), which would otherwise be left without their parent.
            let path = |l: &str| {
                l.trim()
                    .trim_matches(|c| c == '[' || c == ']')
                    .trim()
                    .to_string()
            };
            let own = lines
                .get(header.max(1) - 1)
                .map(|l| path(l))
                .unwrap_or_default();
            let end = if header == 0 || own.is_empty() {
                table_end
            } else {
                let prefix = format!("{own}.");
                (table_end + 1..=lines.len())
                    .find(|&n| is_header(lines[n - 1]) && !path(lines[n - 1]).starts_with(&prefix))
                    .map_or(lines.len(), |n| n - 1)
            };
            header.max(1)..=end
        } else {
            // The value may span lines: blank until the rest is valid TOML again.
            let mut end = line;
            while end < table_end && {
                let trial = blank_lines(&masked, line..=end);
                toml::from_str::<toml::Table>(&trial).is_err()
            } {
                end += 1;
            }
            line..=end
        };
        let before = masked.clone();
        masked = blank_lines(&masked, range.clone());
        blanked.extend(range);
        if masked == before || toml::from_str::<toml::Table>(&masked).is_err() {
            break;
        }
    }
    errors.sort_by_key(|e| e.line);
    (None, errors)
}

/// `text` with the given 1-based lines replaced by spaces (newlines and lengths kept).
fn blank_lines(text: &str, lines: std::ops::RangeInclusive<usize>) -> String {
    text.split_inclusive('\n')
        .enumerate()
        .map(|(i, l)| {
            if lines.contains(&(i + 1)) {
                l.chars()
                    .map(|c| if c == '\n' || c == '\r' { c } else { ' ' })
                    .collect()
            } else {
                l.to_string()
            }
        })
        .collect()
}

/// Byte offset where 1-based `line` starts.
fn line_start_of(text: &str, line: usize) -> usize {
    if line <= 1 {
        return 0;
    }
    text.match_indices('\n')
        .nth(line - 2)
        .map_or(text.len(), |(i, _)| i + 1)
}

/// If an array opened with `key = [` on a line before the error's line is still open at the
/// error (brackets outside strings and comments counted), its 1-based line and key.
fn unclosed_array_before(text: &str, offset: usize) -> Option<(usize, String)> {
    let err_line_start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let mut open: Vec<(usize, Option<String>)> = Vec::new();
    for (n, line) in text[..err_line_start].lines().enumerate() {
        let key = line
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        let mut in_str: Option<char> = None;
        let mut prev = ' ';
        let trimmed = line.trim_start();
        let is_header = open.is_empty() && trimmed.starts_with('[');
        if is_header {
            continue;
        }
        for c in line.chars() {
            match (in_str, c) {
                (Some(q), c) if c == q && prev != '\\' => in_str = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => in_str = Some(c),
                (None, '#') => break,
                (None, '[') => open.push((n + 1, key.clone())),
                (None, ']') => {
                    open.pop();
                }
                _ => {}
            }
            prev = c;
        }
    }
    let (line, key) = open.into_iter().next()?;
    Some((line, key?))
}

/// Whether the error is at a `key =` with nothing after it on its line.
fn value_is_missing(text: &str, offset: usize) -> bool {
    let start = text[..offset.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let line = line.split('#').next().unwrap_or("");
    line.split_once('=')
        .is_some_and(|(k, v)| !k.trim().is_empty() && v.trim().is_empty())
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

impl ConfigErrors {
    /// The errors as an operator reads them: each once, each file's in line order (problems of
    /// the file as a whole last), the files
    /// in the order they were first reported (configuration, then zones, then profiles). Loaders
    /// find problems in whatever order their checks run (and a setting shared by several
    /// endpoints, like a profile's monitor, is checked once per endpoint).
    pub fn in_file_order(self) -> Self {
        let mut files: Vec<PathBuf> = Vec::new();
        let mut unique: Vec<ConfigError> = Vec::with_capacity(self.0.len());
        for e in self.0 {
            if !files.contains(&e.file) {
                files.push(e.file.clone());
            }
            if !unique.contains(&e) {
                unique.push(e);
            }
        }
        // Problems of a file as a whole (line 0: no SOA, …) after those at a line.
        unique.sort_by_key(|e| (files.iter().position(|f| *f == e.file), e.line == 0, e.line));
        Self(unique)
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        Self(vec![e])
    }
}

/// For serde's "unknown field `weigth`, expected one of `name`, `weight`, …" (or "unknown
/// variant"), the expected word closest to the unknown one, if it is close enough to be a typo
/// (edit distance at most a third of its length, and at least 1).
fn did_you_mean(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("unknown variant `"))?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest.split_once("expected ")?.1;
    let candidates = expected.split('`').skip(1).step_by(2);
    let limit = (unknown.chars().count() / 3).max(1);
    candidates
        .map(|c| (edit_distance(&unknown.to_ascii_lowercase(), c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c.to_string())
}

/// Levenshtein distance, counting an adjacent transposition as one edit (`weigth` → `weight`).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
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
/// plus the key on the span's line (`server.udp`). Entries of arrays of tables that carry a
/// `name` key are named the way the loaders name them: `profile[mqtt].endpoint[a].weigth`
/// rather than `profile.endpoint.weigth`, which would not say which of 40 endpoints is meant.
/// Good enough for the flat files we ship (one header per line, `key = value` lines).
fn field_at(text: &str, span: &Range<usize>) -> Option<String> {
    let start = span.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let line = &text[line_start..line_end];
    let trimmed = line.trim();
    if trimmed.starts_with('[') {
        // The error is about this table itself (an unknown `[bogus]`, `[[profile.endpoints]]`):
        // name it by its own header, not by the table above it. Its last component is what is
        // wrong, so it carries no entry name.
        let mut lines: Vec<&str> = text[..line_start].lines().collect();
        let at = lines.len();
        lines.push(line);
        let path = table_path(&lines, at);
        return Some(match path.rsplit_once('.') {
            Some((parent, _)) => format!("{parent}.{}", header_last(trimmed)),
            None => header_last(trimmed).to_string(),
        });
    }
    let above: Vec<&str> = text[..line_start].lines().collect();
    let table = above
        .iter()
        .rposition(|l| l.trim().starts_with('['))
        .map(|i| table_path(&above, i));
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

/// The last component of a `[a.b]` / `[[a.b]]` header: `b`.
fn header_last(header: &str) -> &str {
    let path = header.trim_matches(|c| c == '[' || c == ']').trim();
    path.rsplit('.')
        .next()
        .unwrap_or(path)
        .trim()
        .trim_matches('"')
}

/// The path of the table whose header is `lines[at]`, each array-of-tables component named by
/// the `name` key of the entry it is in (`profile[mqtt].endpoint[a]`).
fn table_path(lines: &[&str], at: usize) -> String {
    let header = |l: &str| {
        let t = l.trim();
        let array = t.starts_with("[[");
        let path = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        (array, path)
    };
    let (_, path) = header(lines[at]);
    let parts: Vec<&str> = path.split('.').map(str::trim).collect();
    let mut out = Vec::with_capacity(parts.len());
    for n in 1..=parts.len() {
        let prefix = parts[..n].join(".");
        // The entry this prefix refers to: the last `[[prefix]]` header at or above `at`.
        let entry = lines[..=at].iter().rposition(|l| {
            let (array, p) = header(l);
            array && l.trim().starts_with('[') && p == prefix
        });
        let name = entry.and_then(|i| entry_name(&lines[i + 1..]));
        out.push(match name {
            Some(name) => format!("{}[{name}]", parts[n - 1]),
            None => parts[n - 1].to_string(),
        });
    }
    out.join(".")
}

/// The `name = "…"` value in the body of a table (the lines up to the next header).
fn entry_name(body: &[&str]) -> Option<String> {
    body.iter()
        .map(|l| l.trim())
        .take_while(|l| !l.starts_with('['))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "name").then(|| v.trim().trim_matches('"').to_ascii_lowercase())
        })
        .filter(|n| !n.is_empty())
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
    fn syntax_errors_are_placed_where_they_are() {
        let parse = |text: &str| {
            let err = toml::from_str::<toml::Table>(text).unwrap_err();
            ConfigError::from_toml(Path::new("g.toml"), text, &err).to_string()
        };
        let e = parse("[server]\nudp = [\"127.0.0.1:5353\",\n  \"[::1]:5353\"\ntcp = []\n");
        assert!(
            e.starts_with("g.toml:2: server.udp: this array is not closed (missing `]`?); TOML noticed at line 4:"),
            "{e}"
        );
        let e = parse("[server]\nworkers =\n[zones]\n");
        assert_eq!(e, "g.toml:2: server.workers: no value after `=`");
        let e = parse("[server]\nworkers = # two\n");
        assert_eq!(e, "g.toml:2: server.workers: no value after `=`");
        // Closed arrays, brackets inside strings and comments, and headers do not confuse it.
        let e = parse("[server]\nudp = [\"[::1]:53\", # [\n]\nworkers = x\n");
        assert!(e.starts_with("g.toml:4: server.workers: "), "{e}");
        assert!(!e.contains("not closed"), "{e}");
    }

    #[test]
    fn typos_get_a_suggestion() {
        let m = "unknown field `weigth`, expected one of `name`, `weight`, `priority`";
        assert_eq!(did_you_mean(m).as_deref(), Some("weight"));
        let m = "unknown field `workerz`, expected one of `udp`, `tcp`, `workers`";
        assert_eq!(did_you_mean(m).as_deref(), Some("workers"));
        let m = "unknown variant `Priority`, expected one of `performance`, `priority`";
        assert_eq!(did_you_mean(m).as_deref(), Some("priority"));
        // Too far from every expected word: no guess.
        let m = "unknown variant `fastest`, expected one of `performance`, `priority`";
        assert_eq!(did_you_mean(m), None);
        assert_eq!(did_you_mean("invalid basic string"), None);
        assert_eq!(edit_distance("weigth", "weight"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn array_table_entries_are_named() {
        let text = "[[profile]]\nname = \"MQTT\"\nmethod = \"weighted\"\n\n\
                    [[profile.endpoint]]\nname = \"a\"\nweigth = 5\n\n\
                    [profile.monitor]\nportt = 1\n\n\
                    [[routing.measured]]\nrtt = 3\n";
        let at = |needle: &str| {
            let off = text.find(needle).unwrap();
            field_at(text, &(off..off + 1))
        };
        assert_eq!(
            at("weigth").as_deref(),
            Some("profile[mqtt].endpoint[a].weigth")
        );
        assert_eq!(at("portt").as_deref(), Some("profile[mqtt].monitor.portt"));
        assert_eq!(at("method").as_deref(), Some("profile[mqtt].method"));
        // No name key: the plain path.
        assert_eq!(at("rtt = 3").as_deref(), Some("routing.measured.rtt"));
    }

    #[test]
    fn display_names_file_line_field() {
        let e = ConfigError::new("a.toml", 3, "server.udp", "bad");
        assert_eq!(e.to_string(), "a.toml:3: server.udp: bad");
        let e = ConfigError::file("zones", "no zone files");
        assert_eq!(e.to_string(), "zones: -: no zone files");
    }
}
