//! Property tests: the parsers that face the network never panic, whatever they are fed,
//! and answer only with clean errors.

use hero_executor::identity::signature;
use hero_executor::intent::{CapabilityName, Claims};
use hero_executor::jsonrpc;
use hero_executor::policy::{Pattern, Policy};
use proptest::prelude::*;

/// Strings shaped like structured-field dictionaries, to reach deep into the parser.
fn sf_like() -> impl Strategy<Value = String> {
    proptest::string::string_regex(
        r#"([a-z0-9*@;=:(),"\\. -]|sig1|created|keyid|nonce|alg|expires|"@method"|:[A-Za-z0-9+/=]*:){0,40}"#,
    )
    .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Invariant: the Signature-Input / Signature parser never panics.
    #[test]
    fn signature_headers_never_panic(input in sf_like(), sig in sf_like(), raw in ".{0,200}") {
        let _ = signature::parse_signatures(&input, &sig, 8);
        let _ = signature::parse_signatures(&raw, &raw, 8);
        let _ = signature::verify_content_digest(&input, raw.as_bytes());
        let _ = signature::parse_public_key(&raw);
        let _ = signature::parse_component(&input);
    }

    /// Invariant: whatever parses is rebuilt into a base without panicking, and a
    /// successfully parsed Signature-Input round-trips through its own serialization.
    #[test]
    fn parsed_signatures_build_bases(input in sf_like(), sig in sf_like()) {
        if let Ok(parsed) = signature::parse_signatures(&input, &sig, 8) {
            let headers = http::HeaderMap::new();
            let uri: http::Uri = "/rpc?a=1".parse().unwrap();
            let view = signature::MessageView::request(&http::Method::POST, &uri, &headers);
            for s in parsed {
                let _ = signature::signature_base(&view, None, &s.components, &s.params_line);
                let again = signature::parse_signatures(&format!("x={}", s.params_line), "x=:AAAA:", 8);
                prop_assert!(again.is_ok(), "{}", s.params_line);
            }
        }
    }

    /// Invariant: JSON-RPC framing never panics on bytes, and every error it returns is a
    /// JSON-RPC parse or invalid-request error.
    #[test]
    fn jsonrpc_framing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = jsonrpc::parse_body(&body, 10) {
            prop_assert!(e.code() == -32700 || e.code() == -32600);
        }
    }

    /// Invariant: JSON-RPC framing classifies any JSON value cleanly.
    #[test]
    fn jsonrpc_framing_of_any_json(value in json_value()) {
        let body = serde_json::to_vec(&value).unwrap();
        match jsonrpc::parse_body(&body, 10) {
            Ok(_) => {}
            Err(e) => prop_assert!(e.code() == -32700 || e.code() == -32600),
        }
    }

    /// Invariant: policy patterns and capability names parse or fail cleanly, and a valid
    /// pattern matches any name without panicking.
    #[test]
    fn patterns_and_names_never_panic(pattern in "[a-z*._]{0,20}", name in "[a-z0-9._/-]{0,30}") {
        if let Ok(p) = Pattern::parse(&pattern) {
            let _ = p.matches(&name);
            prop_assert!(!pattern.split('.').any(|seg| seg.is_empty() || (seg.contains('*') && seg != "*")));
        }
        let _ = CapabilityName::parse(&name);
        let _ = Claims::parse(&name);
    }

    /// Invariant: a policy file, however broken, loads or reports errors with a line.
    #[test]
    fn policy_files_never_panic(text in "(\\[\\[grant\\]\\]|\\[\\[guard\\]\\]|claim = \"[a-z]{0,5}\"|capabilities = \\[\"[a-z*.]{0,8}\"\\]|effect = \"(deny|require_approval|x)\"|approvers = \\[\"ops\"\\]|\n|[a-z =\"\\[\\]]{0,10}){0,12}") {
        if let Err(errors) = Policy::parse(&text, "p.toml") {
            prop_assert!(!errors.is_empty());
            prop_assert!(errors.iter().all(|e| e.starts_with("p.toml:")), "{errors:?}");
        }
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "[a-z.]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("2.0")),
        Just(serde_json::Value::from("jsonrpc")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("jsonrpc".to_owned()),
                    Just("method".to_owned()),
                    Just("id".to_owned()),
                    Just("params".to_owned()),
                    "[a-z]{1,6}".prop_map(|s| s)
                ],
                inner,
                0..5
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}
