//! RFC 9421 HTTP message signature primitives (Ed25519 only), shared by the verifier,
//! the response signer and the client.
//!
//! `httpsig` computes component values (including the `;sf` and `;key` parameters). Two
//! gaps measured in httpsig 0.0.26 are closed here (DESIGN section 6):
//! - `@authority` / `@scheme` / `@target-uri` come from the `Host` header and the
//!   listener's scheme, not from the (origin-form) request URI;
//! - the `@signature-params` line is the received inner list with its parameters in
//!   the order the signer wrote them, not re-ordered, so independent signers verify.
//!
//! Signing and verifying build the base with the same [`signature_base`].

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePublicKey, EncodePublicKey};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use http::{HeaderMap, Method, Uri};
use httpsig::prelude::message_component::{
    HttpMessageComponent, HttpMessageComponentId, HttpMessageComponentName, HttpMessageComponentParam,
};
use sfv::{BareItem, FieldType, InnerList, Item, ListEntry, Parser};
use sha2::{Digest, Sha256, Sha512};

/// Why a signature, digest or key was refused. The text goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SigError(pub String);

fn err(msg: impl Into<String>) -> SigError {
    SigError(msg.into())
}

/// The parts of an HTTP message a signature base is built from.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    /// `http` or `https`: the listener's scheme (a Unix socket serves `http`).
    pub scheme: &'a str,
    /// Set for responses.
    pub status: Option<u16>,
}

impl<'a> MessageView<'a> {
    /// A request received on (or sent to) one of the executor's listeners, which are all plain
    /// HTTP: Unix sockets, and TCP without TLS.
    pub fn request(method: &'a Method, uri: &'a Uri, headers: &'a HeaderMap) -> Self {
        Self {
            method,
            uri,
            headers,
            scheme: "http",
            status: None,
        }
    }
}

/// The request side, for response components with `;req`.
pub type RequestView<'a> = MessageView<'a>;

/// One signature from `Signature-Input` + `Signature`.
#[derive(Debug, Clone)]
pub struct ParsedSignature {
    pub label: String,
    /// Covered components, as the signer listed them.
    pub components: Vec<Item>,
    /// The serialized inner list (`("@method" ...);created=...`), parameters in received order.
    pub params_line: String,
    pub created: Option<i64>,
    pub expires: Option<i64>,
    pub nonce: Option<String>,
    pub alg: Option<String>,
    pub keyid: Option<String>,
    pub signature: Vec<u8>,
}

impl ParsedSignature {
    /// Whether the signature covers the component named `name` (no parameters).
    pub fn covers(&self, name: &str) -> bool {
        self.components
            .iter()
            .any(|c| c.params.is_empty() && matches!(&c.bare_item, BareItem::String(s) if s.as_str() == name))
    }
}

/// Parses the two headers into signatures, in `Signature-Input` order. At most `max` members.
pub fn parse_signatures(input: &str, signature: &str, max: usize) -> Result<Vec<ParsedSignature>, SigError> {
    let inputs: sfv::Dictionary = Parser::new(input)
        .parse()
        .map_err(|e| err(format!("Signature-Input is not a structured dictionary: {e}")))?;
    let signatures: sfv::Dictionary = Parser::new(signature)
        .parse()
        .map_err(|e| err(format!("Signature is not a structured dictionary: {e}")))?;
    if inputs.is_empty() {
        return Err(err("Signature-Input holds no signature"));
    }
    if inputs.len() > max {
        return Err(err(format!(
            "Signature-Input lists {} signatures; at most {max} are accepted",
            inputs.len()
        )));
    }
    let mut parsed = Vec::with_capacity(inputs.len());
    for (label, entry) in &inputs {
        let ListEntry::InnerList(inner) = entry else {
            return Err(err(format!("Signature-Input member {label} is not an inner list")));
        };
        let Some(ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(bytes),
            ..
        })) = signatures.get(label)
        else {
            return Err(err(format!("Signature has no byte sequence for label {label}")));
        };
        parsed.push(from_inner_list(label.as_str(), inner, bytes.clone())?);
    }
    Ok(parsed)
}

fn from_inner_list(label: &str, inner: &InnerList, signature: Vec<u8>) -> Result<ParsedSignature, SigError> {
    let mut out = ParsedSignature {
        label: label.to_owned(),
        components: inner.items.clone(),
        params_line: serialize_inner_list(inner)?,
        created: None,
        expires: None,
        nonce: None,
        alg: None,
        keyid: None,
        signature,
    };
    for (key, value) in &inner.params {
        let integer = || match value {
            BareItem::Integer(i) => Ok(i64::from(*i)),
            _ => Err(err(format!("signature parameter {} must be an integer", key.as_str()))),
        };
        let string = || match value {
            BareItem::String(s) => Ok(s.as_str().to_owned()),
            _ => Err(err(format!("signature parameter {} must be a string", key.as_str()))),
        };
        match key.as_str() {
            "created" => out.created = Some(integer()?),
            "expires" => out.expires = Some(integer()?),
            "nonce" => out.nonce = Some(string()?),
            "alg" => out.alg = Some(string()?),
            "keyid" => out.keyid = Some(string()?),
            "tag" => {
                string()?;
            }
            other => return Err(err(format!("unknown signature parameter {other}"))),
        }
    }
    for item in &inner.items {
        if !matches!(item.bare_item, BareItem::String(_)) {
            return Err(err("covered components must be strings"));
        }
    }
    Ok(out)
}

/// Serializes an inner list canonically, keeping item and parameter order.
pub fn serialize_inner_list(inner: &InnerList) -> Result<String, SigError> {
    let list: sfv::List = vec![ListEntry::InnerList(inner.clone())];
    list.serialize()
        .ok_or_else(|| err("cannot serialize the signature parameters"))
}

/// Builds the signature base: one line per covered component, then `@signature-params`.
/// `request` supplies the values of `;req` components when `message` is a response.
pub fn signature_base(
    message: &MessageView<'_>,
    request: Option<&RequestView<'_>>,
    components: &[Item],
    params_line: &str,
) -> Result<String, SigError> {
    let mut base = String::with_capacity(256);
    let mut seen = std::collections::HashSet::new();
    for item in components {
        let identifier = item.serialize();
        if !seen.insert(identifier.clone()) {
            return Err(err(format!("component {identifier} is listed twice")));
        }
        let id = HttpMessageComponentId::try_from(identifier.as_str())
            .map_err(|e| err(format!("component {identifier}: {e}")))?;
        let source = if id.params.0.contains(&HttpMessageComponentParam::Req) {
            request.ok_or_else(|| err(format!("{identifier}: ;req is only valid on responses")))?
        } else {
            message
        };
        let values = component_values(source, &id)?;
        let line = HttpMessageComponent::try_from((&id, values.as_slice()))
            .map_err(|e| err(format!("component {identifier}: {e}")))?;
        base.push_str(&identifier);
        base.push_str(": ");
        base.push_str(line.value.as_component_value());
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(params_line);
    Ok(base)
}

/// The raw values of one component of `message`.
fn component_values(message: &MessageView<'_>, id: &HttpMessageComponentId) -> Result<Vec<String>, SigError> {
    let name = id.name.to_string();
    let name = name.trim_matches('"');
    match &id.name {
        HttpMessageComponentName::HttpField(field) => {
            if field.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(err(format!("component name {field:?} must be lowercase")));
            }
            let values: Vec<String> = message
                .headers
                .get_all(field.as_str())
                .iter()
                .map(|v| v.to_str().map(|s| s.trim().to_owned()))
                .collect::<Result<_, _>>()
                .map_err(|_| err(format!("header {field} is not visible ASCII")))?;
            if values.is_empty() {
                return Err(err(format!("covered header {field} is not present")));
            }
            // Several field lines combine into one value (RFC 9421 section 2.1).
            Ok(vec![values.join(", ")])
        }
        HttpMessageComponentName::Derived(_) => {
            let path = match message.uri.path() {
                "" => "/",
                p => p,
            };
            let authority = || -> Result<String, SigError> {
                match message.headers.get(http::header::HOST) {
                    Some(host) => host
                        .to_str()
                        .map(str::to_owned)
                        .map_err(|_| err("Host is not visible ASCII")),
                    None => message
                        .uri
                        .authority()
                        .map(|a| a.to_string())
                        .ok_or_else(|| err("no Host header")),
                }
            };
            let value = match name {
                "@method" => message.method.as_str().to_owned(),
                "@path" => path.to_owned(),
                "@query" => format!("?{}", message.uri.query().unwrap_or_default()),
                "@authority" => authority()?.to_ascii_lowercase(),
                "@scheme" => message.scheme.to_owned(),
                "@target-uri" => format!(
                    "{}://{}{}{}",
                    message.scheme,
                    authority()?.to_ascii_lowercase(),
                    path,
                    message.uri.query().map(|q| format!("?{q}")).unwrap_or_default()
                ),
                "@request-target" => message
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| path.to_owned()),
                "@status" => message
                    .status
                    .ok_or_else(|| err("@status is only valid on responses"))?
                    .to_string(),
                // httpsig picks the named parameter out of `k=v` pairs.
                "@query-param" => {
                    return Ok(message
                        .uri
                        .query()
                        .unwrap_or_default()
                        .split('&')
                        .map(str::to_owned)
                        .collect());
                }
                other => return Err(err(format!("unsupported derived component {other}"))),
            };
            Ok(vec![value])
        }
    }
}

/// A `Content-Digest` value (RFC 9530) with sha-256 of `body`.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", B64.encode(Sha256::digest(body)))
}

/// Checks a `Content-Digest` header against `body`. Every sha-256 / sha-512 member must
/// match, and at least one must be present.
pub fn verify_content_digest(header: &str, body: &[u8]) -> Result<(), SigError> {
    let dict: sfv::Dictionary = Parser::new(header)
        .parse()
        .map_err(|e| err(format!("Content-Digest is not a structured dictionary: {e}")))?;
    let mut checked = 0;
    for (alg, entry) in &dict {
        let ListEntry::Item(Item {
            bare_item: BareItem::ByteSequence(expected),
            ..
        }) = entry
        else {
            return Err(err(format!(
                "Content-Digest member {} is not a byte sequence",
                alg.as_str()
            )));
        };
        let actual: Vec<u8> = match alg.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        if actual != *expected {
            return Err(err(format!("Content-Digest {} does not match the body", alg.as_str())));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(err("Content-Digest has no sha-256 or sha-512 member"));
    }
    Ok(())
}

/// Verifies an Ed25519 signature over `base`.
pub fn verify_ed25519(key: &VerifyingKey, base: &str, signature: &[u8]) -> Result<(), SigError> {
    let signature = Signature::from_slice(signature).map_err(|_| err("an Ed25519 signature is 64 bytes"))?;
    key.verify_strict(base.as_bytes(), &signature)
        .map_err(|_| err("the signature does not verify"))
}

/// Signs `base` with Ed25519.
pub fn sign_ed25519(key: &SigningKey, base: &str) -> Vec<u8> {
    use ed25519_dalek::Signer;
    key.sign(base.as_bytes()).to_bytes().to_vec()
}

/// Reads a public key: PEM SubjectPublicKeyInfo, or base64 of the raw 32 bytes.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, SigError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text).map_err(|e| err(format!("not an Ed25519 public key PEM: {e}")));
    }
    let raw = B64
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
        .map_err(|_| err("a public key is a PEM SubjectPublicKeyInfo or the base64 of 32 raw bytes"))?;
    let raw: [u8; 32] = raw
        .try_into()
        .map_err(|_| err("a raw Ed25519 public key is exactly 32 bytes"))?;
    VerifyingKey::from_bytes(&raw).map_err(|_| err("not a valid Ed25519 public key"))
}

/// A private key as PKCS#8 v1 PEM (RFC 8410), the form OpenSSL, Python's `cryptography`
/// and the RFC 9421 test key use. (`ed25519-dalek` alone writes v2, with the public key
/// embedded, which some readers refuse.)
pub fn private_key_pem(key: &SigningKey) -> Result<String, SigError> {
    use ed25519_dalek::pkcs8::{EncodePrivateKey, KeypairBytes};
    let bytes = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    bytes
        .to_pkcs8_pem(Default::default())
        .map(|pem| pem.to_string())
        .map_err(|e| err(format!("cannot encode the private key: {e}")))
}

/// A public key as PEM SubjectPublicKeyInfo.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(Default::default()).unwrap_or_default()
}

/// Builds signature parameters in this executor's order: `created;expires?;nonce;keyid;alg`.
pub fn params_inner_list(
    components: &[&str],
    created: i64,
    expires: Option<i64>,
    nonce: Option<&str>,
    keyid: &str,
) -> Result<InnerList, SigError> {
    let items = components
        .iter()
        .map(|c| parse_component(c))
        .collect::<Result<Vec<Item>, _>>()?;
    let mut inner = InnerList::new(items);
    let key = |k: &str| sfv::Key::from_string(k.to_owned()).map_err(|(e, _)| err(e.to_string()));
    let string = |s: &str| {
        sfv::String::from_string(s.to_owned())
            .map(BareItem::String)
            .map_err(|(e, _)| err(format!("{s:?}: {e}")))
    };
    let integer = |i: i64| {
        sfv::Integer::try_from(i)
            .map(BareItem::Integer)
            .map_err(|e| err(e.to_string()))
    };
    inner.params.insert(key("created")?, integer(created)?);
    if let Some(expires) = expires {
        inner.params.insert(key("expires")?, integer(expires)?);
    }
    if let Some(nonce) = nonce {
        inner.params.insert(key("nonce")?, string(nonce)?);
    }
    inner.params.insert(key("keyid")?, string(keyid)?);
    inner.params.insert(key("alg")?, string("ed25519")?);
    Ok(inner)
}

/// Parses one component identifier, e.g. `"@method"` or `"signature";req;key="sig1"`.
pub fn parse_component(text: &str) -> Result<Item, SigError> {
    Parser::new(text)
        .parse::<Item>()
        .map_err(|e| err(format!("component {text}: {e}")))
}

/// The sfv serialization of a byte sequence, `:base64:`.
pub fn byte_sequence(bytes: &[u8]) -> String {
    format!(":{}:", B64.encode(bytes))
}
