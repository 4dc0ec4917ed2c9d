//! `openrpc.json` is valid OpenRPC, complete, and matches what the daemon implements.

mod common;
#[path = "common/openrpc.rs"]
mod common_openrpc;

use common::*;
use serde_json::{Value, json};

fn document() -> Value {
    serde_json::from_str(hero_executor::OPENRPC_JSON).expect("openrpc.json is JSON")
}

#[test]
fn openrpc_json_is_valid_against_the_meta_schema() {
    let errors = common_openrpc::meta_schema_errors(&document());
    assert!(
        errors.is_empty(),
        "openrpc.json violates the OpenRPC meta-schema: {errors:#?}"
    );
}

#[test]
fn the_meta_schema_check_can_fail() {
    let mut broken = document();
    broken["methods"][0]["params"] = json!("not a list");
    broken["openrpc"] = json!(42);
    assert!(common_openrpc::meta_schema_errors(&broken).len() >= 2);
}

#[test]
fn every_method_is_complete() {
    let doc = document();
    for method in doc["methods"].as_array().unwrap() {
        let name = method["name"].as_str().unwrap();
        assert!(method["summary"].is_string(), "{name}: summary");
        assert!(method["result"]["schema"].is_object(), "{name}: result schema");
        assert!(method["errors"].is_array(), "{name}: errors");
        let intent = &method["x-hero-intent"];
        for key in [
            "side_effect_class",
            "audience_scope",
            "identity_requirement",
            "idempotency",
        ] {
            assert!(intent[key].is_string(), "{name}: x-hero-intent.{key}");
        }
        for param in method["params"].as_array().unwrap() {
            assert!(
                param["schema"].is_object(),
                "{name}: param {} has no schema",
                param["name"]
            );
        }
    }
}

#[test]
fn documented_methods_are_the_implemented_methods() {
    let documented: Vec<String> = document()["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    let implemented: Vec<String> = hero_executor::command::METHODS.iter().map(|m| m.to_string()).collect();
    assert_eq!(documented, implemented);
}

/// The list above is not just a constant: each documented method exists on a live daemon
/// (answers with anything but -32601), and a reserved-namespace method that is not
/// documented does not. The simple ones must succeed outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_method_answers() {
    let node = Node::new();
    let _echo = node.spawn_echo("echo");
    let _executor = node.start(node.config()).await;
    let public_key = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        ed25519_dalek::SigningKey::from_bytes(&[1; 32])
            .verifying_key()
            .as_bytes(),
    );
    let executed = rpc(&node.rpc_sock(), "echo.echo", json!({"message": "m"})).await;
    assert!(executed.get("result").is_some());
    let runs = rpc(&node.rpc_sock(), "runs.list", json!({"limit": 1})).await;
    let run_id = runs["result"]["runs"][0]["id"].as_str().unwrap().to_owned();
    let params = |name: &str| match name {
        "execute" => json!({"capability": "echo.echo", "params": {"message": "m"}}),
        "catalog.search" => json!({"query": "echo"}),
        "catalog.describe" => json!({"capability": "echo.echo"}),
        "runs.get" | "runs.wait" | "runs.approve" | "runs.reject" | "runs.cancel" => json!({"run_id": run_id}),
        "policy.explain" => json!({"capability": "echo.echo"}),
        "keys.add" => json!({"keyid": "k1", "public_key": public_key, "claims": ["agent"]}),
        "keys.revoke" => json!({"keyid": "k1"}),
        "script.run" => json!({"source": "echo::echo(#{message: \"m\"}).ok"}),
        _ => json!({}),
    };
    // These need a run held for approval (or a source) to succeed; here they must exist and
    // refuse cleanly.
    let needs_setup = ["runs.approve", "runs.reject", "runs.cancel", "sources.accept"];
    for name in hero_executor::command::METHODS {
        let response = rpc(&node.rpc_sock(), name, params(name)).await;
        if needs_setup.contains(name) {
            assert_ne!(error_code(&response), -32601, "{name}: {response}");
        } else {
            assert!(response.get("result").is_some(), "{name}: {response}");
        }
    }
    for undocumented in [
        "catalog.drop",
        "rpc.nothing",
        "executor.shutdown",
        "runs.delete",
        "policy.write",
    ] {
        assert_eq!(
            error_code(&rpc(&node.rpc_sock(), undocumented, json!({})).await),
            -32601,
            "{undocumented}"
        );
    }
}
