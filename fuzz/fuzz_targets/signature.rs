//! Fuzzes the request-signature path: header parsing, signature base, digest and
//! Ed25519 verification, with attacker-controlled Signature-Input, Signature, extra
//! headers and body. Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run signature` (see README).

#![no_main]

use hero_executor::identity::signature::{self, MessageView};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Fields separated by NUL: signature-input, signature, x-hero-context, path, body.
    let mut parts = data.splitn(5, |b| *b == 0);
    let text = |p: Option<&[u8]>| String::from_utf8_lossy(p.unwrap_or_default()).into_owned();
    let (input, sig, context, path) = (text(parts.next()), text(parts.next()), text(parts.next()), text(parts.next()));
    let body = parts.next().unwrap_or_default();

    let mut headers = http::HeaderMap::new();
    if let Ok(value) = context.parse() {
        headers.insert("x-hero-context", value);
    }
    let _ = signature::verify_content_digest(&input, body);
    let Ok(uri) = format!("/{}", path.trim_start_matches('/')).parse::<http::Uri>() else { return };
    let Ok(parsed) = signature::parse_signatures(&input, &sig, 8) else { return };
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
    let view = MessageView::request(&http::Method::POST, &uri, &headers);
    for s in parsed {
        if let Ok(base) = signature::signature_base(&view, None, &s.components, &s.params_line) {
            let _ = signature::verify_ed25519(&key, &base, &s.signature);
        }
    }
});
