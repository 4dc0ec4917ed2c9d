//! Validation against the official OpenRPC meta-schema, vendored in `tests/fixtures/`
//! (see its README). The JSON-Schema meta-schema it references is served from the
//! vendored copy too, so nothing is fetched.

use serde_json::Value;

struct Vendored;

impl jsonschema::Retrieve for Vendored {
    fn retrieve(&self, uri: &jsonschema::Uri<String>) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.as_str().trim_end_matches('/') == "https://meta.json-schema.tools" {
            return Ok(fixture("json-schema-tools-meta-schema.json"));
        }
        Err(format!("no vendored copy of {uri}").into())
    }
}

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    // Both documents name a custom meta-schema; they are draft-07 documents.
    value["$schema"] = "http://json-schema.org/draft-07/schema#".into();
    value
}

/// Every way `doc` violates the OpenRPC meta-schema (empty when it is valid).
pub fn meta_schema_errors(doc: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .with_retriever(Vendored)
        .build(&fixture("openrpc-meta-schema.json"))
        .expect("the meta-schema compiles");
    validator
        .iter_errors(doc)
        .map(|e| format!("{}: {e}", e.instance_path().as_str()))
        .collect()
}
