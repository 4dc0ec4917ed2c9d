//! Errors found in a TOML file the executor reads (the policy, the sources), each with the
//! file and the line it belongs to (`FILE:LINE: problem`), so a bad file is refused whole
//! with every error at once.

use serde::de::DeserializeOwned;
use toml::Spanned;

/// Collects the errors of one file.
pub(crate) struct FileErrors<'a> {
    source: &'a str,
    text: &'a str,
    pub list: Vec<String>,
}

impl<'a> FileErrors<'a> {
    /// The errors of `text`, named `source` in each message.
    pub fn new(source: &'a str, text: &'a str) -> Self {
        Self {
            source,
            text,
            list: Vec::new(),
        }
    }

    /// Reads the file's TOML into `T`; a syntax or type error is the only error then. With
    /// `hide_values`, the message does not quote the value it found (a secret written where
    /// a reference belongs).
    pub fn read<T: DeserializeOwned>(&self, hide_values: bool) -> Result<T, Vec<String>> {
        toml::from_str(self.text).map_err(|e| {
            let line = e.span().map(|s| self.line_of(s.start)).unwrap_or(1);
            let message = match hide_values {
                true => without_values(e.message()),
                false => e.message().to_owned(),
            };
            vec![format!("{}:{line}: {message}", self.source)]
        })
    }

    /// The line of a byte offset in the file.
    pub fn line_of(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].matches('\n').count() + 1
    }

    pub fn push(&mut self, line: usize, problem: impl std::fmt::Display) {
        self.list.push(format!("{}:{line}: {problem}", self.source));
    }

    /// An error at the line where `spanned` starts.
    pub fn at<T>(&mut self, spanned: &Spanned<T>, problem: impl std::fmt::Display) {
        let line = self.line_of(spanned.span().start);
        self.push(line, problem);
    }

    /// `Ok(value)` when nothing was found wrong, else every error.
    pub fn finish<T>(self, value: T) -> Result<T, Vec<String>> {
        match self.list.is_empty() {
            true => Ok(value),
            false => Err(self.list),
        }
    }
}

/// A TOML error message without the values it quotes (`invalid type: integer \`1234\``).
/// Messages about fields quote only names (the file's keys and the expected ones) and are
/// kept whole, so an unknown or missing field is named.
fn without_values(message: &str) -> String {
    if ["unknown field", "missing field", "duplicate field"]
        .iter()
        .any(|p| message.starts_with(p))
    {
        return message.to_owned();
    }
    let parts: Vec<&str> = message
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { "…" } else { part })
        .collect();
    parts.join("`")
}
