//! Reading a sources file: TOML into checked source definitions. A bad file is refused
//! whole, with every error and its line (`FILE:LINE: problem`), like the policy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::secret::SecretRef;
use crate::catalog::spec::{Audience, HeroIntent, Idempotency, IdentityRequirement, SideEffect};
use crate::toml_file::FileErrors;

/// Longest per-source timeout.
const MAX_TIMEOUT_MS: u64 = 600_000;

/// One checked `[[source]]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceDef {
    pub name: String,
    /// The line of its `[[source]]` header (for errors found later, e.g. in its spec).
    pub line: usize,
    pub kind: Kind,
    pub auth: Option<Auth>,
    pub timeout: Option<Duration>,
    /// Per operation (or tool) intent overrides, by operation name.
    pub overrides: BTreeMap<String, IntentOverride>,
}

#[cfg(test)]
impl SourceDef {
    /// A bare MCP-over-HTTP source named `name`, for tests that only need a definition.
    pub(crate) fn for_test(name: &str) -> Self {
        Self {
            name: name.into(),
            line: 1,
            kind: Kind::McpHttp {
                url: reqwest::Url::parse("http://x").unwrap(),
                headers: Default::default(),
            },
            auth: None,
            timeout: None,
            overrides: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    OpenApi {
        spec: PathBuf,
        base: BaseUrl,
    },
    McpStdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        secret_env: BTreeMap<String, SecretRef>,
        /// Where the child runs: the sources file's directory.
        dir: PathBuf,
    },
    McpHttp {
        url: reqwest::Url,
        headers: BTreeMap<String, String>,
    },
}

/// Where an OpenAPI source's operations are sent.
#[derive(Debug, Clone, PartialEq)]
pub enum BaseUrl {
    /// `http(s)://host[:port][/prefix]`.
    Http(reqwest::Url),
    /// `unix:/path.sock` (HTTP/1.1 over a Unix socket).
    Unix(PathBuf),
}

/// How a source's calls are authenticated; every value is a secret reference.
#[derive(Debug, Clone, PartialEq)]
pub enum Auth {
    Bearer { token: SecretRef },
    Header { name: http::HeaderName, value: SecretRef },
    Basic { username: SecretRef, password: SecretRef },
    Query { name: String, value: SecretRef },
}

impl Auth {
    /// The references it uses, for listings (never their values).
    pub fn describe(&self) -> serde_json::Value {
        match self {
            Self::Bearer { token } => serde_json::json!({"type": "bearer", "token": token.describe()}),
            Self::Header { name, value } => {
                serde_json::json!({"type": "header", "name": name.as_str(), "value": value.describe()})
            }
            Self::Basic { username, password } => serde_json::json!({
                "type": "basic", "username": username.describe(), "password": password.describe()
            }),
            Self::Query { name, value } => {
                serde_json::json!({"type": "query", "name": name, "value": value.describe()})
            }
        }
    }
}

/// An operation's `x-hero-intent` fields set by the admin (the rest derived).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentOverride {
    pub side_effect_class: Option<SideEffect>,
    pub audience_scope: Option<Audience>,
    pub identity_requirement: Option<IdentityRequirement>,
    pub idempotency: Option<Idempotency>,
}

impl IntentOverride {
    pub fn apply(&self, mut intent: HeroIntent) -> HeroIntent {
        intent.side_effect_class = self.side_effect_class.unwrap_or(intent.side_effect_class);
        intent.audience_scope = self.audience_scope.unwrap_or(intent.audience_scope);
        intent.identity_requirement = self.identity_requirement.unwrap_or(intent.identity_requirement);
        intent.idempotency = self.idempotency.unwrap_or(intent.idempotency);
        intent.declared = true;
        intent
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    kind: Spanned<String>,
    spec: Option<Spanned<String>>,
    base_url: Option<Spanned<String>>,
    command: Option<Spanned<String>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    secret_env: BTreeMap<String, Spanned<String>>,
    url: Option<Spanned<String>>,
    #[serde(default)]
    headers: BTreeMap<String, Spanned<String>>,
    auth: Option<Spanned<RawAuth>>,
    timeout_ms: Option<Spanned<u64>>,
    #[serde(default)]
    operations: BTreeMap<String, Spanned<RawOperation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    #[serde(rename = "type")]
    kind: String,
    token: Option<String>,
    name: Option<String>,
    value: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOperation {
    intent: RawIntent,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntent {
    side_effect_class: Option<String>,
    audience_scope: Option<String>,
    identity_requirement: Option<String>,
    idempotency: Option<String>,
}

type Errors<'a> = FileErrors<'a>;

/// Parses and checks a sources file; `source` names it in errors. Relative spec paths are
/// taken from `dir` (the file's directory).
pub fn parse(text: &str, source: &str, dir: &Path) -> Result<Vec<SourceDef>, Vec<String>> {
    let mut errors = Errors::new(source, text);
    let raw: RawFile = errors.read(true)?;
    let mut defs: Vec<SourceDef> = Vec::new();
    for entry in &raw.source {
        let line = errors.line_of(entry.span().start);
        if let Some(def) = check(entry.get_ref(), line, dir, &mut errors) {
            if defs.iter().any(|d| d.name == def.name) {
                errors.at(&entry.get_ref().name, format!("a second source named {:?}", def.name));
                continue;
            }
            defs.push(def);
        }
    }
    errors.finish(defs)
}

fn check(raw: &RawSource, line: usize, dir: &Path, errors: &mut Errors<'_>) -> Option<SourceDef> {
    let before = errors.list.len();
    let name = raw.name.get_ref();
    if !crate::upstream::socket::is_target_name(name) {
        errors.at(
            &raw.name,
            format!("source name {name:?}: use ^[a-z][a-z0-9_]*$, not a reserved namespace nor hero_executor"),
        );
    }
    let forbid = |errors: &mut Errors<'_>, field: Option<&Spanned<String>>, what: &str, kind: &str| {
        if let Some(field) = field {
            errors.at(field, format!("{what} does not apply to kind = \"{kind}\""));
        }
    };
    let kind = match raw.kind.get_ref().as_str() {
        "openapi" => {
            forbid(errors, raw.command.as_ref(), "command", "openapi");
            forbid(errors, raw.url.as_ref(), "url", "openapi");
            if !raw.args.is_empty() || !raw.env.is_empty() || !raw.secret_env.is_empty() || !raw.headers.is_empty() {
                errors.at(
                    &raw.kind,
                    "args, env, secret_env and headers apply to kind = \"mcp\" only",
                );
            }
            let spec = match &raw.spec {
                Some(spec) => dir.join(spec.get_ref()),
                None => {
                    errors.at(&raw.kind, "an openapi source needs spec (a JSON or YAML file)");
                    PathBuf::new()
                }
            };
            let base = match &raw.base_url {
                Some(base) => base_url(base.get_ref()).map_err(|why| errors.at(base, why)).ok(),
                None => {
                    errors.at(&raw.kind, "an openapi source needs base_url");
                    None
                }
            };
            base.map(|base| Kind::OpenApi { spec, base })
        }
        "mcp" => {
            forbid(errors, raw.spec.as_ref(), "spec", "mcp");
            forbid(errors, raw.base_url.as_ref(), "base_url", "mcp");
            match (&raw.command, &raw.url) {
                (Some(command), None) => {
                    if !raw.headers.is_empty() {
                        errors.at(command, "headers apply to an mcp source with url");
                    }
                    if raw.auth.is_some() {
                        errors.at(
                            command,
                            "auth applies to an mcp source with url (use secret_env for a command)",
                        );
                    }
                    let mut secret_env = BTreeMap::new();
                    for (key, value) in &raw.secret_env {
                        match SecretRef::parse(value.get_ref()) {
                            Ok(r) => drop(secret_env.insert(key.clone(), r)),
                            Err(why) => errors.at(value, format!("secret_env.{key}: {why}")),
                        }
                    }
                    Some(Kind::McpStdio {
                        command: command.get_ref().clone(),
                        args: raw.args.clone(),
                        env: raw.env.clone(),
                        secret_env,
                        dir: dir.to_owned(),
                    })
                }
                (None, Some(url)) => {
                    if !raw.args.is_empty() || !raw.env.is_empty() || !raw.secret_env.is_empty() {
                        errors.at(url, "args, env and secret_env apply to an mcp source with command");
                    }
                    let mut headers = BTreeMap::new();
                    for (key, value) in &raw.headers {
                        let ok = http::HeaderName::from_bytes(key.as_bytes()).is_ok()
                            && http::HeaderValue::from_str(value.get_ref()).is_ok();
                        match ok {
                            true => drop(headers.insert(key.clone(), value.get_ref().clone())),
                            false => errors.at(value, format!("headers.{key} is not a valid HTTP header")),
                        }
                    }
                    if raw.auth.as_ref().is_some_and(|a| a.get_ref().kind == "query") {
                        errors.at(url, "an mcp url takes auth bearer, header or basic, not query");
                    }
                    match base_url(url.get_ref()) {
                        Ok(BaseUrl::Http(url)) => Some(Kind::McpHttp { url, headers }),
                        Ok(BaseUrl::Unix(_)) => {
                            errors.at(url, "an mcp url is http(s)://...");
                            None
                        }
                        Err(why) => {
                            errors.at(url, why);
                            None
                        }
                    }
                }
                _ => {
                    errors.at(
                        &raw.kind,
                        "an mcp source needs either command (stdio) or url (Streamable HTTP)",
                    );
                    None
                }
            }
        }
        other => {
            errors.at(&raw.kind, format!("unknown kind {other:?} (known: openapi, mcp)"));
            None
        }
    };
    let auth = raw.auth.as_ref().and_then(|auth| match parse_auth(auth.get_ref()) {
        Ok(auth) => Some(auth),
        Err(why) => {
            errors.at(auth, format!("auth: {why}"));
            None
        }
    });
    let timeout = raw.timeout_ms.as_ref().and_then(|t| match *t.get_ref() {
        ms @ 1..=MAX_TIMEOUT_MS => Some(Duration::from_millis(ms)),
        _ => {
            errors.at(t, format!("timeout_ms is 1 to {MAX_TIMEOUT_MS}"));
            None
        }
    });
    let mut overrides = BTreeMap::new();
    for (op, raw_op) in &raw.operations {
        match intent_override(&raw_op.get_ref().intent) {
            Ok(o) => drop(overrides.insert(op.clone(), o)),
            Err(why) => errors.at(raw_op, format!("operations.{op}: {why}")),
        }
    }
    if errors.list.len() > before {
        return None;
    }
    Some(SourceDef {
        name: name.clone(),
        line,
        kind: kind?,
        auth,
        timeout,
        overrides,
    })
}

/// `http(s)://host[:port][/prefix]` or `unix:/path.sock`: no credentials, query or fragment.
fn base_url(text: &str) -> Result<BaseUrl, String> {
    if let Some(path) = text.strip_prefix("unix:") {
        let path = PathBuf::from(path);
        return match path.is_absolute() {
            true => Ok(BaseUrl::Unix(path)),
            false => Err(format!("{text:?}: a unix: base_url names an absolute socket path")),
        };
    }
    let url = reqwest::Url::parse(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{text:?}: use http(s)://host[:port][/prefix] or unix:/path.sock"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials do not belong in a URL: use auth with a secret reference".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text:?}: a base URL has no query or fragment"));
    }
    Ok(BaseUrl::Http(url))
}

fn parse_auth(raw: &RawAuth) -> Result<Auth, String> {
    let secret = |field: &Option<String>, what: &str| -> Result<SecretRef, String> {
        let text = field.as_deref().ok_or_else(|| format!("{} needs {what}", raw.kind))?;
        SecretRef::parse(text).map_err(|why| format!("{what}: {why}"))
    };
    let unused = |fields: &[(&str, bool)]| -> Result<(), String> {
        match fields.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(format!("{name} does not apply to type = {:?}", raw.kind)),
            None => Ok(()),
        }
    };
    let name = || raw.name.clone().ok_or_else(|| format!("{} needs name", raw.kind));
    match raw.kind.as_str() {
        "bearer" => {
            unused(&[
                ("name", raw.name.is_some()),
                ("value", raw.value.is_some()),
                ("username", raw.username.is_some()),
                ("password", raw.password.is_some()),
            ])?;
            Ok(Auth::Bearer {
                token: secret(&raw.token, "token")?,
            })
        }
        "header" => {
            unused(&[
                ("token", raw.token.is_some()),
                ("username", raw.username.is_some()),
                ("password", raw.password.is_some()),
            ])?;
            let header =
                http::HeaderName::from_bytes(name()?.as_bytes()).map_err(|_| "name is not an HTTP header name")?;
            Ok(Auth::Header {
                name: header,
                value: secret(&raw.value, "value")?,
            })
        }
        "basic" => {
            unused(&[
                ("token", raw.token.is_some()),
                ("name", raw.name.is_some()),
                ("value", raw.value.is_some()),
            ])?;
            Ok(Auth::Basic {
                username: secret(&raw.username, "username")?,
                password: secret(&raw.password, "password")?,
            })
        }
        "query" => {
            unused(&[
                ("token", raw.token.is_some()),
                ("username", raw.username.is_some()),
                ("password", raw.password.is_some()),
            ])?;
            Ok(Auth::Query {
                name: name()?,
                value: secret(&raw.value, "value")?,
            })
        }
        other => Err(format!("unknown type {other:?} (known: bearer, header, basic, query)")),
    }
}

fn intent_override(raw: &RawIntent) -> Result<IntentOverride, String> {
    fn known<T: Copy>(
        value: &Option<String>,
        all: &[T],
        text: impl Fn(T) -> &'static str,
        what: &str,
    ) -> Result<Option<T>, String> {
        let Some(value) = value else { return Ok(None) };
        all.iter()
            .copied()
            .find(|v| text(*v) == value)
            .map(Some)
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|v| text(*v)).collect();
                format!("unknown {what} {value:?} (known: {})", names.join(", "))
            })
    }
    Ok(IntentOverride {
        side_effect_class: known(
            &raw.side_effect_class,
            SideEffect::ALL,
            SideEffect::as_str,
            "side_effect_class",
        )?,
        audience_scope: known(&raw.audience_scope, Audience::ALL, Audience::as_str, "audience_scope")?,
        identity_requirement: known(
            &raw.identity_requirement,
            IdentityRequirement::ALL,
            IdentityRequirement::as_str,
            "identity_requirement",
        )?,
        idempotency: known(&raw.idempotency, Idempotency::ALL, Idempotency::as_str, "idempotency")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_file_parses() {
        let text = r#"
[[source]]
name = "pets"
kind = "openapi"
spec = "petstore.yaml"
base_url = "http://127.0.0.1:8080/api/v3"
timeout_ms = 5000
auth = { type = "bearer", token = "env:PET_TOKEN" }

[source.operations.deletePet]
intent = { side_effect_class = "admin" }

[[source]]
name = "notes"
kind = "mcp"
command = "python3"
args = ["server.py"]
secret_env = { TOKEN = "file:/run/token" }
"#;
        let defs = parse(text, "s.toml", Path::new("/etc/hero")).unwrap();
        assert_eq!(defs.len(), 2);
        assert_eq!(defs[0].line, 2);
        assert!(matches!(&defs[0].kind, Kind::OpenApi { spec, .. } if spec == Path::new("/etc/hero/petstore.yaml")));
        assert_eq!(
            defs[0].overrides["deletePet"].side_effect_class,
            Some(SideEffect::Admin)
        );
        assert_eq!(defs[1].line, 13);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = r#"
[[source]]
name = "Bad-Name"
kind = "openapi"
spec = "x.json"
base_url = "ftp://x"

[[source]]
name = "runs"
kind = "mcp"

[[source]]
name = "ok"
kind = "openapi"
spec = "x.json"
base_url = "https://user:pw@example.com"
auth = { type = "bearer", token = "hunter2" }
"#;
        let errors = parse(text, "s.toml", Path::new("/")).unwrap_err();
        let joined = errors.join("\n");
        assert!(joined.contains("s.toml:3: source name"), "{joined}");
        assert!(joined.contains("s.toml:6: \"ftp://x\""), "{joined}");
        assert!(joined.contains("s.toml:9: source name \"runs\""), "{joined}");
        assert!(joined.contains("s.toml:10: an mcp source needs"), "{joined}");
        assert!(joined.contains("s.toml:16: credentials"), "{joined}");
        assert!(joined.contains("s.toml:17: auth:"), "{joined}");
        assert!(
            !joined.contains("hunter2") && !joined.contains("pw@"),
            "no value is echoed: {joined}"
        );
        let typed = parse(
            "[[source]]\nname = \"a\"\nkind = \"openapi\"\nspec = 98765432\n",
            "s.toml",
            Path::new("/"),
        );
        let typed = typed.unwrap_err().join("\n");
        assert!(typed.starts_with("s.toml:4:") && !typed.contains("98765432"), "{typed}");
        let unknown = parse(
            "[[source]]\nname = \"a\"\nkind = \"x\"\nbogus = 1\n",
            "s.toml",
            Path::new("/"),
        )
        .unwrap_err();
        assert!(unknown[0].starts_with("s.toml:"), "{unknown:?}");
        assert!(
            unknown[0].contains("unknown field `bogus`"),
            "the field is named: {unknown:?}"
        );
    }
}
