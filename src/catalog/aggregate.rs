//! `catalog.openrpc`: one OpenRPC document for every capability a caller may see.
//!
//! Method names get the service prefix (`hero_books.search`), and each service's
//! `components` are merged under prefixed keys (`hero_books.Book`) with every
//! `$ref` rewritten to match, so a client generator can build one typed client.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Capability, Snapshot};

/// Builds the aggregated document.
pub fn document<'a>(snapshot: &Snapshot, caps: impl Iterator<Item = &'a Arc<Capability>>) -> Value {
    let mut methods = Vec::new();
    let mut components: Map<String, Value> = Map::new();
    let mut merged_services = std::collections::BTreeSet::new();
    for cap in caps {
        let Some(service) = snapshot.services.get(&cap.service) else {
            continue;
        };
        // Where the parser found it: no search per capability.
        let original = service
            .document
            .get("methods")
            .and_then(Value::as_array)
            .and_then(|ms| ms.get(cap.index));
        let Some(original) = original else {
            continue;
        };
        let mut method = original.clone();
        method["name"] = Value::String(cap.name.clone());
        rewrite_refs(&mut method, &cap.service);
        methods.push(method);
        if merged_services.insert(cap.service.clone())
            && let Some(Value::Object(kinds)) = service.document.get("components")
        {
            for (kind, entries) in kinds {
                let Value::Object(entries) = entries else {
                    continue;
                };
                let target = components
                    .entry(kind.clone())
                    .or_insert_with(|| Value::Object(Map::new()));
                for (key, entry) in entries {
                    let mut entry = entry.clone();
                    rewrite_refs(&mut entry, &cap.service);
                    target[format!("{}.{key}", cap.service)] = entry;
                }
            }
        }
    }
    let mut doc = json!({
        "openrpc": "1.3.2",
        "info": {
            "title": "HERO node capabilities (through hero_executor)",
            "version": crate::VERSION,
            "description": "Every capability the caller may run, named <service>.<method>. \
                            Call them on hero_executor's rpc.sock.",
        },
        "methods": methods,
    });
    if !components.is_empty() {
        doc["components"] = Value::Object(components);
    }
    doc
}

/// Rewrites `#/components/<kind>/<name>` to `#/components/<kind>/<service>.<name>`.
fn rewrite_refs(value: &mut Value, service: &str) {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "$ref"
                    && let Value::String(reference) = child
                    && let Some(rest) = reference.strip_prefix("#/components/")
                    && let Some((kind, name)) = rest.split_once('/')
                {
                    *reference = format!("#/components/{kind}/{service}.{name}");
                } else {
                    rewrite_refs(child, service);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite_refs(v, service)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_prefixed() {
        let mut v =
            json!({"schema": {"$ref": "#/components/schemas/Book"}, "x": [{"$ref": "#/components/schemas/A/b"}]});
        rewrite_refs(&mut v, "books");
        assert_eq!(v["schema"]["$ref"], "#/components/schemas/books.Book");
        assert_eq!(v["x"][0]["$ref"], "#/components/schemas/books.A/b");
    }
}
