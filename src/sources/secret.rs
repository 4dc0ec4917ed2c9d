//! Secret references (`env:NAME`, `file:PATH`) and the redaction of their values.
//!
//! A reference is resolved only when a call is sent (a file is read again on every use, so
//! a rotated credential needs no restart), and every value resolved for a call is replaced
//! by `[redacted]` wherever it shows up in what the target answered, before that answer is
//! recorded or returned. Nothing here implements `Display` for a value.

use std::path::PathBuf;

use http::{HeaderName, HeaderValue};
use serde_json::Value;
use serde_json::value::RawValue;

use super::file::Auth;
use crate::error::ExecError;

/// What replaces a secret's value in an answer or an error.
pub const REDACTED: &str = "[redacted]";

/// Largest secret file read, in bytes.
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// Where a secret's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

impl SecretRef {
    /// Parses `env:NAME` or `file:/absolute/path`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix("env:") {
            let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            return match ok {
                true => Ok(Self::Env(name.to_owned())),
                false => Err(format!(
                    "{text:?}: an environment variable name is letters, digits and _"
                )),
            };
        }
        if let Some(path) = text.strip_prefix("file:") {
            let path = PathBuf::from(path);
            return match path.is_absolute() {
                true => Ok(Self::File(path)),
                false => Err(format!("{text:?}: a secret file is named by an absolute path")),
            };
        }
        Err("a secret is a reference, env:NAME or file:/path (never the value itself)".to_owned())
    }

    /// Reads the value now. The error names the reference, never a value.
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            Self::Env(name) => std::env::var(name).map_err(|_| format!("secret env:{name} is not set")),
            Self::File(path) => {
                use std::io::Read;
                let shown = path.display();
                let file = std::fs::File::open(path).map_err(|e| format!("secret file:{shown}: {e}"))?;
                let mut text = String::new();
                file.take(MAX_SECRET_FILE)
                    .read_to_string(&mut text)
                    .map_err(|e| format!("secret file:{shown}: {e}"))?;
                // A trailing newline (echo > file) is not part of the secret.
                Ok(text.trim_end_matches(['\n', '\r']).to_owned())
            }
        }
        .and_then(|value| match value.is_empty() {
            true => Err(format!("secret {} is empty", self.describe())),
            false => Ok(value),
        })
    }

    /// The reference as written (`env:NAME`), for listings.
    pub fn describe(&self) -> String {
        match self {
            Self::Env(name) => format!("env:{name}"),
            Self::File(path) => format!("file:{}", path.display()),
        }
    }
}

/// A source's credentials, resolved for one request: what to send, and what to redact.
#[derive(Default)]
pub struct Credentials {
    /// Headers to set (marked sensitive, so no log of them shows the value).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// A query parameter to append (`type = "query"`).
    pub query: Option<(String, String)>,
    pub redactor: Redactor,
}

impl Auth {
    /// Resolves every reference now. The error names a reference, never a value.
    pub fn resolve(&self) -> Result<Credentials, String> {
        let sensitive = |text: String| {
            HeaderValue::from_str(&text)
                .map(|mut v| {
                    v.set_sensitive(true);
                    v
                })
                .map_err(|_| "a secret is not a valid header value".to_owned())
        };
        let mut out = Credentials::default();
        match self {
            Auth::Bearer { token } => {
                let token = token.resolve()?;
                out.redactor.add(&token);
                out.headers
                    .push((http::header::AUTHORIZATION, sensitive(format!("Bearer {token}"))?));
            }
            Auth::Header { name, value } => {
                let value = value.resolve()?;
                out.redactor.add(&value);
                out.headers.push((name.clone(), sensitive(value)?));
            }
            Auth::Basic { username, password } => {
                use base64::Engine;
                let (user, pass) = (username.resolve()?, password.resolve()?);
                let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                for value in [&user, &pass, &encoded] {
                    out.redactor.add(value);
                }
                out.headers
                    .push((http::header::AUTHORIZATION, sensitive(format!("Basic {encoded}"))?));
            }
            Auth::Query { name, value } => {
                let value = value.resolve()?;
                out.redactor.add(&value);
                out.redactor
                    .add(&form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>());
                out.query = Some((name.clone(), value));
            }
        }
        Ok(out)
    }
}

/// The secret values one call used; replaces them in whatever comes back.
#[derive(Default, Clone)]
pub struct Redactor {
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} values)", self.values.len())
    }
}

impl Redactor {
    /// Remembers a value to redact, and the forms a target may echo it in as text: JSON
    /// escaped (`\"`, `\u…`), and with `/` escaped as `\/` (PHP's default).
    pub fn add(&mut self, value: &str) {
        if value.is_empty() {
            return;
        }
        let escaped = serde_json::to_string(value).unwrap_or_default();
        let escaped = escaped
            .get(1..escaped.len().saturating_sub(1))
            .unwrap_or_default()
            .to_owned();
        let slashed = escaped.replace('/', "\\/");
        for form in [value.to_owned(), escaped, slashed] {
            if !form.is_empty() && !self.values.contains(&form) {
                self.values.push(form);
            }
        }
        // Longest first: a value that contains another is replaced whole.
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// Adds every value of `other`.
    pub fn extend(&mut self, other: &Redactor) {
        for value in &other.values {
            if !self.values.contains(value) {
                self.values.push(value.clone());
            }
        }
        self.values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    }

    /// `text` redacted whole, then cut to at most `max` bytes (on a character boundary),
    /// with no trailing start of a secret left at the cut.
    pub fn excerpt(&self, text: &str, max: usize) -> (String, bool) {
        let redacted = self.text(text);
        if redacted.len() <= max {
            return (redacted, false);
        }
        let mut end = max;
        while !redacted.is_char_boundary(end) {
            end -= 1;
        }
        let mut cut = &redacted[..end];
        for value in &self.values {
            for len in (1..value.len().min(cut.len() + 1)).rev() {
                if value.is_char_boundary(len) && cut.ends_with(&value[..len]) {
                    cut = &cut[..cut.len() - len];
                    break;
                }
            }
        }
        (cut.to_owned(), true)
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `text` with every secret value replaced.
    pub fn text(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for value in &self.values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }

    /// Replaces secret values in every string (and key) of `value`; whether any was found.
    pub fn value(&self, value: &mut Value) -> bool {
        match value {
            Value::String(s) => {
                let redacted = self.text(s);
                let changed = redacted != *s;
                *s = redacted;
                changed
            }
            Value::Array(items) => items.iter_mut().fold(false, |found, v| self.value(v) | found),
            Value::Object(map) => {
                let mut found = false;
                if map.keys().any(|k| self.text(k) != *k) {
                    let entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
                    for (k, v) in entries {
                        map.insert(self.text(&k), v);
                    }
                    found = true;
                }
                map.values_mut().fold(found, |found, v| self.value(v) | found)
            }
            // A number or a boolean cannot carry a secret string whole; its text may
            // (a numeric PIN): checked on the serialized answer by the caller.
            _ => false,
        }
    }

    /// An answer with every secret value replaced, as raw JSON; a secret left in its text
    /// (in a number, say) makes the whole answer a protocol error rather than pass through.
    pub fn answer(&self, value: &mut Value) -> Result<Box<RawValue>, ExecError> {
        if !self.is_empty() {
            self.value(value);
        }
        let text = serde_json::to_string(value).map_err(|e| ExecError::Internal(e.to_string()))?;
        if self.finds(&text) {
            return Err(ExecError::TargetProtocol(format!(
                "the answer held a secret where it could not be replaced by {REDACTED}; withheld"
            )));
        }
        RawValue::from_string(text).map_err(|e| ExecError::Internal(e.to_string()))
    }

    /// Whether `text` contains any secret value.
    pub fn finds(&self, text: &str) -> bool {
        self.values.iter().any(|v| text.contains(v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_parse_and_refuse_literals() {
        assert_eq!(SecretRef::parse("env:TOKEN").unwrap(), SecretRef::Env("TOKEN".into()));
        assert!(SecretRef::parse("file:/run/secret").is_ok());
        for bad in ["hunter2", "env:", "env:A-B", "file:relative", ""] {
            let why = SecretRef::parse(bad).unwrap_err();
            assert!(!why.contains("hunter2") || bad != "hunter2", "{why}");
        }
    }

    #[test]
    fn files_are_read_on_use_and_errors_do_not_show_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "first\n").unwrap();
        let r = SecretRef::File(path.clone());
        assert_eq!(r.resolve().unwrap(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(r.resolve().unwrap(), "second", "rotation needs no restart");
        std::fs::remove_file(&path).unwrap();
        assert!(r.resolve().unwrap_err().contains("No such file"));
    }

    #[test]
    fn values_are_redacted_in_strings_and_keys() {
        let mut r = Redactor::default();
        r.add("s3cret");
        r.add("s3cret-longer");
        let mut v = json!({"a": "Bearer s3cret", "s3cret": ["x s3cret-longer y", 1]});
        assert!(r.value(&mut v));
        assert_eq!(
            v,
            json!({"a": "Bearer [redacted]", "[redacted]": ["x [redacted] y", 1]})
        );
        assert!(!r.finds(&v.to_string()));
    }

    #[test]
    fn escaped_forms_and_cut_excerpts_do_not_leak() {
        let mut r = Redactor::default();
        r.add("ab/cd\"ef");
        assert_eq!(r.text(r#"x ab\/cd\"ef y"#), "x [redacted] y");
        assert_eq!(r.text(r#"ab/cd\"ef"#), "[redacted]");
        let mut r = Redactor::default();
        r.add("SECRET-TOKEN");
        // However the text is padded, no prefix of the secret survives the cut, also when the
        // text itself was cut inside the secret (so redaction cannot match it whole).
        for pad in 0..20 {
            let text = format!("{}SECRET-TOKEN tail", "p".repeat(pad));
            let (cut, truncated) = r.excerpt(&text, 12);
            assert!(truncated);
            assert!(!cut.contains("SECRET") && !cut.ends_with('S'), "{pad}: {cut}");
        }
        for pad in 3..20 {
            let text = format!("{}SECRET-TOK", "p".repeat(pad));
            let (cut, truncated) = r.excerpt(&text, 12);
            assert!(truncated);
            assert!(!cut.contains("SECRET") && !cut.ends_with('S'), "{pad}: {cut}");
        }
    }
}
