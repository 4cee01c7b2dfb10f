//! [`LabError`]: a problem in a lab file, shown as `file:line:col` with the
//! offending line and carets under the value, the way compilers do.

use std::fmt;
use std::path::{Path, PathBuf};

use serde_saphyr::Location;

/// One problem in one lab file.
#[derive(Debug, Clone)]
pub struct LabError {
    /// The lab file.
    pub path: PathBuf,
    /// 1-based line (0 when unknown).
    pub line: usize,
    /// 1-based column (0 when unknown).
    pub col: usize,
    /// What is wrong and what was expected.
    pub message: String,
    /// The source line and its caret underline, when the location is known.
    snippet: Option<(String, usize)>,
}

impl LabError {
    /// An error at a location of `source` (the file's text).
    pub fn at(path: &Path, source: &str, loc: Location, message: impl Into<String>) -> Self {
        let (line, col) = (loc.line() as usize, loc.column() as usize);
        let snippet = (line > 0)
            .then(|| source.lines().nth(line - 1))
            .flatten()
            .map(|text| (text.to_string(), token_width(text, col)));
        LabError {
            path: path.to_path_buf(),
            line,
            col,
            message: message.into(),
            snippet,
        }
    }

    /// An error at the word `needle` inside the value at `loc` (a name in a
    /// predicate), or at the value when the word is not on its line.
    pub fn at_word(
        path: &Path,
        source: &str,
        loc: Location,
        needle: &str,
        message: impl Into<String>,
    ) -> Self {
        let mut e = LabError::at(path, source, loc, message);
        let Some(text) = (e.line > 0)
            .then(|| source.lines().nth(e.line - 1))
            .flatten()
        else {
            return e;
        };
        let start: usize = text
            .chars()
            .take(e.col.saturating_sub(1))
            .map(char::len_utf8)
            .sum();
        let found = text[start.min(text.len())..]
            .match_indices(needle)
            .map(|(i, _)| start + i)
            .find(|&i| {
                let word = |c: char| c.is_alphanumeric() || c == '_';
                let before = text[..i].chars().next_back().is_none_or(|c| !word(c));
                let after = text[i + needle.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !word(c));
                before && after
            });
        if let Some(i) = found {
            e.col = text[..i].chars().count() + 1;
            e.snippet = Some((text.to_string(), needle.chars().count()));
        }
        e
    }

    /// An error about the whole file (unreadable, empty).
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        LabError {
            path: path.to_path_buf(),
            line: 0,
            col: 0,
            message: message.into(),
            snippet: None,
        }
    }
}

/// Width of the value starting at `col` (1-based, in characters), for the carets.
fn token_width(line: &str, col: usize) -> usize {
    let rest: String = line.chars().skip(col.saturating_sub(1)).collect();
    let quoted = rest.starts_with('"') || rest.starts_with('\'');
    let width = if quoted {
        let q = rest.chars().next().unwrap_or('"');
        rest[1..].find(q).map(|i| i + 2).unwrap_or(rest.len())
    } else {
        let end = rest.find([',', '}', ']', '#']).unwrap_or(rest.len());
        // A mapping key: underline the key, not its value.
        rest[..end].find(": ").unwrap_or(end)
    };
    rest[..width.min(rest.len())]
        .trim_end()
        .chars()
        .count()
        .max(1)
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        if self.line == 0 {
            return write!(f, " --> {}", self.path.display());
        }
        write!(f, " --> {}:{}:{}", self.path.display(), self.line, self.col)?;
        if let Some((text, width)) = &self.snippet {
            let gutter = self.line.to_string().len();
            write!(
                f,
                "\n{:gutter$} |\n{} | {}\n{:gutter$} | {}{}",
                "",
                self.line,
                text,
                "",
                " ".repeat(self.col.saturating_sub(1)),
                "^".repeat(*width),
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for LabError {}

/// All problems found in a set of lab files.
#[derive(Debug, Clone, Default)]
pub struct LabErrors(pub Vec<LabError>);

impl fmt::Display for LabErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LabErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carets_cover_the_value() {
        assert_eq!(token_width("    kind: redis7", 11), 6);
        assert_eq!(token_width("  expect: { x: \"> 0\" }", 16), 5);
        assert_eq!(token_width("  params: { workers: 8, y: 1 }", 22), 1);
        assert_eq!(token_width("sumary: typo", 1), 6);
    }
}
