//! A service's `components` are kept once per service and shared by its capabilities.
//! These helpers follow `#/components/<kind>/<name>` references: which components a
//! schema reaches, and a self-contained copy of a schema with just those beside it.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// A `#/components/<kind>/<name>` reference, as `(kind, name)`.
fn component_ref(reference: &str) -> Option<(&str, &str)> {
    let rest = reference.strip_prefix("#/components/")?;
    let (kind, name) = rest.split_once('/')?;
    // A pointer deeper into a component still needs the whole component.
    Some((kind, name.split('/').next().unwrap_or(name)))
}

/// Every `$ref` into the components directly in `value` (not following them).
fn direct_refs<'a>(value: &'a Value, out: &mut Vec<(&'a str, &'a str)>) {
    match value {
        Value::Object(map) => {
            for (key, member) in map {
                match (key.as_str(), member) {
                    ("$ref", Value::String(reference)) => out.extend(component_ref(reference)),
                    _ => direct_refs(member, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| direct_refs(item, out)),
        _ => {}
    }
}

/// The components `schema` reaches, transitively, as `(kind, name)`; stops counting at
/// `limit` (the caller only needs to know the budget is exceeded).
pub fn reachable<'a>(schema: &'a Value, components: &'a Value, limit: usize) -> BTreeSet<(&'a str, &'a str)> {
    let mut seen = BTreeSet::new();
    let mut todo = Vec::new();
    direct_refs(schema, &mut todo);
    while let Some((kind, name)) = todo.pop() {
        if seen.len() >= limit || !seen.insert((kind, name)) {
            continue;
        }
        if let Some(target) = components.get(kind).and_then(|k| k.get(name)) {
            direct_refs(target, &mut todo);
        }
    }
    seen
}

/// `schema` with `components` holding just what it reaches, so it resolves on its own.
pub fn with_components(schema: &Value, components: &Value) -> Value {
    let mut copy = schema.clone();
    let reached = reachable(schema, components, usize::MAX);
    if reached.is_empty() || !copy.is_object() {
        return copy;
    }
    let mut kept: Map<String, Value> = Map::new();
    for (kind, name) in reached {
        if let Some(target) = components.get(kind).and_then(|k| k.get(name)) {
            let entry = kept.entry(kind.to_owned()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = entry {
                map.insert(name.to_owned(), target.clone());
            }
        }
    }
    copy["components"] = Value::Object(kept);
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn follows_references_transitively_and_keeps_only_those() {
        let components = json!({"schemas": {
            "A": {"properties": {"b": {"$ref": "#/components/schemas/B"}}},
            "B": {"items": {"$ref": "#/components/schemas/C/properties/x"}},
            "C": {"properties": {"x": {"type": "integer"}}},
            "Unused": {"type": "string"}
        }});
        let schema = json!({"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A"}}});
        let reached = reachable(&schema, &components, 100);
        assert_eq!(reached.len(), 3, "{reached:?}");
        assert_eq!(reachable(&schema, &components, 2).len(), 2, "the limit stops the walk");
        let copy = with_components(&schema, &components);
        let kept: Vec<&String> = copy["components"]["schemas"].as_object().unwrap().keys().collect();
        assert_eq!(kept, ["A", "B", "C"]);
        // A cycle ends.
        let cyclic = json!({"schemas": {"N": {"properties": {"next": {"$ref": "#/components/schemas/N"}}}}});
        assert_eq!(
            reachable(&json!({"$ref": "#/components/schemas/N"}), &cyclic, 10).len(),
            1
        );
    }
}
