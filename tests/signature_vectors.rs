//! RFC 9421 signature bases and verification against known answers and against a
//! signer that shares no code with the executor (the base is written out by hand here).

use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signer, SigningKey};
use hero_executor::identity::signature::{self, MessageView};
use http::{HeaderMap, Method, Uri};

const PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=\n-----END PUBLIC KEY-----\n";
const PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n";

fn rfc_request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("host", "example.com".parse().unwrap());
    headers.insert("date", "Tue, 20 Apr 2021 02:07:55 GMT".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert(
        "content-digest",
        "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
            .parse()
            .unwrap(),
    );
    headers.insert("content-length", "18".parse().unwrap());
    headers
}

/// RFC 9421 Appendix B.2.6 (see ../shared/fixtures/rfc9421-ed25519-vector.md). The request
/// URI is origin-form, as a server sees it: `@authority` must come from `Host`.
#[test]
fn rfc9421_b26_ed25519_vector_verifies() {
    let headers = rfc_request_headers();
    let uri: Uri = "/foo?param=Value&Pet=dog".parse().unwrap();
    let view = MessageView {
        method: &Method::POST,
        uri: &uri,
        headers: &headers,
        scheme: "https",
        status: None,
    };
    let input = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    let sig = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
    let parsed = signature::parse_signatures(input, sig, 8).unwrap();
    assert_eq!(parsed.len(), 1);
    let s = &parsed[0];
    assert_eq!(
        (s.label.as_str(), s.keyid.as_deref(), s.created),
        ("sig-b26", Some("test-key-ed25519"), Some(1618884473))
    );
    let base = signature::signature_base(&view, None, &s.components, &s.params_line).unwrap();
    let expected = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
    assert_eq!(base, expected);
    let key = signature::parse_public_key(PUBLIC_PEM).unwrap();
    signature::verify_ed25519(&key, &base, &s.signature).unwrap();
    // Ed25519 is deterministic: signing the base gives the RFC's signature.
    let secret = SigningKey::from_pkcs8_pem(PRIVATE_PEM).unwrap();
    assert_eq!(signature::sign_ed25519(&secret, &base), s.signature);
    // The body digest of the RFC request checks out, and a changed body does not.
    signature::verify_content_digest(headers["content-digest"].to_str().unwrap(), b"{\"hello\": \"world\"}").unwrap();
    assert!(
        signature::verify_content_digest(headers["content-digest"].to_str().unwrap(), b"{\"hello\": \"World\"}")
            .is_err()
    );
    // Any tampered component breaks it.
    let mut tampered = headers.clone();
    tampered.insert("host", "example.org".parse().unwrap());
    let view = MessageView {
        headers: &tampered,
        ..view
    };
    let base = signature::signature_base(&view, None, &s.components, &s.params_line).unwrap();
    assert!(signature::verify_ed25519(&key, &base, &s.signature).is_err());
}

/// A signer that orders its parameters `created;keyid;alg;nonce;expires` (unlike httpsig's
/// fixed order) and shares no code with the executor: the base is written by hand.
#[test]
fn parameters_in_any_order_verify() {
    let secret = SigningKey::from_bytes(&[7u8; 32]);
    let params = r#"("@method" "@path" "@query" "x-hero-context");created=1700000000;keyid="agent-1";alg="ed25519";nonce="n-123";expires=1700000300"#;
    let base = format!(
        "\"@method\": POST\n\"@path\": /rpc\n\"@query\": ?a=1\n\"x-hero-context\": 4\n\"@signature-params\": {params}"
    );
    let sig = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        secret.sign(base.as_bytes()).to_bytes(),
    );
    let input = format!("sig1={params}");
    let signature_header = format!("sig1=:{sig}:");

    let mut headers = HeaderMap::new();
    headers.insert("x-hero-context", "4".parse().unwrap());
    let uri: Uri = "/rpc?a=1".parse().unwrap();
    let view = MessageView {
        method: &Method::POST,
        uri: &uri,
        headers: &headers,
        scheme: "http",
        status: None,
    };
    let parsed = signature::parse_signatures(&input, &signature_header, 8).unwrap();
    let s = &parsed[0];
    assert_eq!(s.params_line, params, "parameters keep the signer's order");
    assert_eq!(
        (s.nonce.as_deref(), s.expires, s.alg.as_deref()),
        (Some("n-123"), Some(1700000300), Some("ed25519"))
    );
    let rebuilt = signature::signature_base(&view, None, &s.components, &s.params_line).unwrap();
    assert_eq!(rebuilt, base);
    signature::verify_ed25519(&secret.verifying_key(), &rebuilt, &s.signature).unwrap();
}

#[test]
fn malformed_headers_are_clean_errors() {
    for (input, sig) in [
        ("", ""),
        ("sig1=(\"@method\");created=1", "sig1=:AAAA"),
        ("sig1=\"not a list\"", "sig1=:AAAA:"),
        ("sig1=(\"@method\");created=1", "other=:AAAA:"),
        ("sig1=(\"@method\");created=\"soon\"", "sig1=:AAAA:"),
        ("sig1=(\"@method\");created=1;color=\"red\"", "sig1=:AAAA:"),
        ("sig1=(@method);created=1", "sig1=:AAAA:"),
    ] {
        assert!(signature::parse_signatures(input, sig, 8).is_err(), "{input} / {sig}");
    }
    let many: Vec<String> = (0..9).map(|i| format!("s{i}=(\"@method\");created=1")).collect();
    let sigs: Vec<String> = (0..9).map(|i| format!("s{i}=:AAAA:")).collect();
    assert!(signature::parse_signatures(&many.join(", "), &sigs.join(", "), 8).is_err());
}
