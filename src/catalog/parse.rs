//! Turning one service's `rpc.discover` document into capabilities, at a bounded cost.
//!
//! The document is refused past [`SpecLimits::max_bytes`]; methods past
//! [`SpecLimits::max_methods`] are skipped with a warning. `components` are kept once per
//! service (an `Arc` every capability shares), never copied into each method's stored
//! schema. A params schema is compiled with just the components it reaches beside it; each
//! method may reach at most [`SpecLimits::max_refs_per_method`] components and carry at most
//! [`SpecLimits::max_method_bytes`] of schema (its content descriptors, which it keeps, and
//! the components its params and result reach), and a service's methods at most
//! [`SpecLimits::max_refs`] and [`SpecLimits::max_service_bytes`] in all (what compiling
//! and serving them costs), else the method is skipped with a warning. Patterns use the `regex` engine (linear time): a pattern it
//! cannot run (backreferences, look-around) makes the method's schema refused, so no
//! validation can take unbounded time and nothing is forwarded unvalidated.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::schema;
use super::spec::{Capability, HeroIntent, ParamStructure, ServiceSpec};

/// What one service's spec may cost.
#[derive(Debug, Clone, Copy)]
pub struct SpecLimits {
    /// Largest `rpc.discover` document, in bytes.
    pub max_bytes: usize,
    /// Most methods kept per service.
    pub max_methods: usize,
    /// Most components one method's params may reach.
    pub max_refs_per_method: usize,
    /// Most component references compiled across a service's methods.
    pub max_refs: usize,
    /// Most bytes of schema one method carries (its descriptors and the components it reaches).
    pub max_method_bytes: usize,
    /// Most bytes of schema a service's methods carry in all.
    pub max_service_bytes: usize,
}

impl Default for SpecLimits {
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024 * 1024,
            max_methods: 10_000,
            max_refs_per_method: 256,
            max_refs: 20_000,
            max_method_bytes: 1024 * 1024,
            max_service_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Parses a service's OpenRPC document. Fails only when the document is unusable as a
/// whole; individual bad methods become warnings.
pub fn parse_service(
    service: &str,
    raw: &str,
    fingerprint: String,
    limits: &SpecLimits,
) -> Result<ServiceSpec, String> {
    if raw.len() > limits.max_bytes {
        return Err(format!(
            "rpc.discover result of {} bytes exceeds the limit of {} bytes",
            raw.len(),
            limits.max_bytes
        ));
    }
    let document: Value = serde_json::from_str(raw).map_err(|e| format!("rpc.discover result is not JSON: {e}"))?;
    // OpenRPC 1.3 schemas are JSON Schema draft-07.
    parse_document(service, document, fingerprint, limits, jsonschema::Draft::Draft7)
}

/// Parses an OpenRPC document already read (a service's, or one built from a source),
/// its schemas in `draft`.
pub fn parse_document(
    service: &str,
    document: Value,
    fingerprint: String,
    limits: &SpecLimits,
    draft: jsonschema::Draft,
) -> Result<ServiceSpec, String> {
    let methods = document
        .get("methods")
        .and_then(Value::as_array)
        .ok_or("rpc.discover result has no \"methods\" array (not an OpenRPC document)")?;
    let components = Arc::new(document.get("components").cloned().unwrap_or(Value::Null));
    let mut warnings = Vec::new();
    if methods.len() > limits.max_methods {
        warnings.push(format!(
            "{} methods: only the first {} are served",
            methods.len(),
            limits.max_methods
        ));
    }
    let mut capabilities = BTreeMap::new();
    let mut budget = Budget::default();
    let mut descriptor_sizes = HashMap::new();
    for (index, method) in methods.iter().take(limits.max_methods).enumerate() {
        // A method's descriptors are copied into it: measured before they are.
        let descriptors = descriptor_bytes(method, &components, &mut descriptor_sizes);
        if descriptors > limits.max_method_bytes {
            let name = method.get("name").and_then(Value::as_str).unwrap_or("?");
            let shown: String = name.chars().take(64).collect();
            warnings.push(format!(
                "{shown}: its content descriptors come to {descriptors} bytes (at most {}); skipped",
                limits.max_method_bytes
            ));
            continue;
        }
        let cap = parse_method(service, method, &components)
            .and_then(|cap| compile(Capability { index, ..cap }, limits, &mut budget, draft));
        match cap {
            Ok(cap) => {
                if capabilities.insert(cap.method.clone(), Arc::new(cap)).is_some() {
                    warnings.push("duplicate method name; the last one wins".to_owned());
                }
            }
            Err(why) => warnings.push(why),
        }
    }
    Ok(ServiceSpec {
        name: service.to_owned(),
        fingerprint,
        document,
        capabilities,
        warnings,
        source: None,
    })
}

/// Compiles a method's params schema, with just the components it reaches beside it, within
/// the budget of components a method and the whole service may reach (what compiling
/// costs). A schema that does not compile, or is over budget, skips the method.
fn compile(
    mut cap: Capability,
    limits: &SpecLimits,
    budget: &mut Budget,
    draft: jsonschema::Draft,
) -> Result<Capability, String> {
    let (schema, param_names) = params_schema(&cap.params);
    let names_ok = param_names.len() == cap.params.len();
    if !names_ok {
        return Err(format!("{}: a param without a name", cap.method));
    }
    budget.charge(&cap, &schema, limits)?;
    let schema = schema::with_components(&schema, &cap.components);
    // Nothing is fetched over the network.
    let validator = jsonschema::options()
        .with_draft(draft)
        .with_pattern_options(jsonschema::PatternOptions::regex())
        .build(&schema)
        .map_err(|e| format!("{}: params schema refused: {e}; skipped", cap.method))?;
    cap.validator = Some(validator);
    cap.param_names = param_names;
    Ok(cap)
}

/// What a service's methods cost so far: components reached, and bytes of schema copied
/// into each method (its content descriptors, and the components its params and result
/// reach, which a self-contained schema carries).
#[derive(Default)]
struct Budget {
    refs: usize,
    bytes: usize,
    /// Serialized size of each component, measured once.
    sizes: HashMap<(String, String), usize>,
}

impl Budget {
    fn charge(&mut self, cap: &Capability, params: &Value, limits: &SpecLimits) -> Result<(), String> {
        let over = |what: String| Err(format!("{}: {what}; skipped", cap.method));
        let reached = schema::reachable(params, &cap.components, limits.max_refs_per_method + 1);
        let result = cap.result.as_ref().and_then(|r| r.get("schema"));
        let result_reached = result.map(|r| schema::reachable(r, &cap.components, limits.max_refs_per_method + 1));
        let refs = reached.len() + result_reached.as_ref().map_or(0, |r| r.len());
        if refs > limits.max_refs_per_method {
            return over(format!(
                "params and result reach more than {} components",
                limits.max_refs_per_method
            ));
        }
        if self.refs + refs > limits.max_refs {
            return over(format!(
                "the service's schemas reach more than {} components in all",
                limits.max_refs
            ));
        }
        let mut bytes: usize = cap.params.iter().chain(&cap.result).map(json_size).sum();
        for (kind, name) in reached.iter().chain(result_reached.iter().flatten()) {
            let key = ((*kind).to_owned(), (*name).to_owned());
            let components = &cap.components;
            bytes += *self
                .sizes
                .entry(key)
                .or_insert_with(|| components.get(*kind).and_then(|k| k.get(*name)).map_or(0, json_size));
        }
        if bytes > limits.max_method_bytes {
            return over(format!(
                "its schemas come to {bytes} bytes (at most {})",
                limits.max_method_bytes
            ));
        }
        if self.bytes + bytes > limits.max_service_bytes {
            return over(format!(
                "the service's schemas come to more than {} bytes in all",
                limits.max_service_bytes
            ));
        }
        self.refs += refs;
        self.bytes += bytes;
        Ok(())
    }
}

/// Bytes of the content descriptors a method's params and result name in the components
/// (what resolving them copies), each measured once.
fn descriptor_bytes(method: &Value, components: &Value, sizes: &mut HashMap<String, usize>) -> usize {
    let params = method.get("params").and_then(Value::as_array).into_iter().flatten();
    params
        .chain(method.get("result"))
        .filter_map(|d| d.get("$ref").and_then(Value::as_str))
        .filter_map(|r| r.strip_prefix("#/components/contentDescriptors/"))
        .map(|key| {
            *sizes.entry(key.to_owned()).or_insert_with(|| {
                components
                    .get("contentDescriptors")
                    .and_then(|c| c.get(key))
                    .map_or(0, json_size)
            })
        })
        .sum()
}

/// Bytes of `value` as JSON.
fn json_size(value: &Value) -> usize {
    serde_json::to_vec(value).map_or(usize::MAX / 4, |v| v.len())
}

fn parse_method(service: &str, method: &Value, components: &Arc<Value>) -> Result<Capability, String> {
    let name = method
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or("a method without a name was skipped")?;
    if name.starts_with("rpc.") {
        return Err(format!("{name}: rpc.* methods are protocol methods, not capabilities"));
    }
    // Names are bounded and printable: a name that reads as another must not become one.
    crate::access::check_name(&format!("{service}.{name}")).map_err(|why| {
        let shown: String = name.chars().take(64).collect();
        format!("method {shown:?} skipped: {why}")
    })?;
    let text = |key: &str| method.get(key).and_then(Value::as_str).map(str::to_owned);
    let params: Vec<Value> = method
        .get("params")
        .and_then(Value::as_array)
        .map(|list| list.iter().map(|p| resolve_descriptor(p, components)).collect())
        .unwrap_or_default();
    let param_structure = match method.get("paramStructure").and_then(Value::as_str) {
        Some("by-name") => ParamStructure::ByName,
        Some("by-position") => ParamStructure::ByPosition,
        _ => ParamStructure::Either,
    };
    let search_text = format!(
        "{} {}",
        text("summary").unwrap_or_default(),
        text("description").unwrap_or_default()
    )
    .to_lowercase();
    Ok(Capability {
        search_name: format!("{service}.{name}").to_lowercase(),
        search_text,
        name: format!("{service}.{name}"),
        service: service.to_owned(),
        method: name.to_owned(),
        summary: text("summary"),
        description: text("description"),
        params,
        param_structure,
        components: components.clone(),
        result: method.get("result").map(|r| resolve_descriptor(r, components)),
        errors: method
            .get("errors")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
        intent: HeroIntent::from_method(method),
        validator: None,
        route: None,
        pending: false,
        timeout: None,
        index: 0,
        param_names: Vec::new(),
    })
}

/// The JSON Schema of a method's params (content descriptors) as one object (by name), and
/// the names of the params that have one, in order. Its `#/components/...` refs resolve
/// against the service's components.
pub(super) fn params_schema(params: &[Value]) -> (Value, Vec<String>) {
    let mut properties = Map::new();
    let mut required = Vec::new();
    let mut param_names = Vec::new();
    for param in params {
        let Some(pname) = param.get("name").and_then(Value::as_str) else {
            continue;
        };
        properties.insert(pname.to_owned(), param.get("schema").cloned().unwrap_or(json!({})));
        if param.get("required").and_then(Value::as_bool).unwrap_or(false) {
            required.push(Value::String(pname.to_owned()));
        }
        param_names.push(pname.to_owned());
    }
    let mut schema = json!({ "type": "object", "properties": properties });
    if !required.is_empty() {
        schema["required"] = Value::Array(required);
    }
    (schema, param_names)
}

/// Resolves `{"$ref": "#/components/contentDescriptors/X"}` to the descriptor itself.
fn resolve_descriptor(descriptor: &Value, components: &Value) -> Value {
    let target = descriptor
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix("#/components/contentDescriptors/"))
        .and_then(|key| components.get("contentDescriptors")?.get(key));
    target.unwrap_or(descriptor).clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(methods: usize, component: usize, descriptor: bool) -> String {
        let big = json!({"type": "object", "description": "x".repeat(component)});
        let param = match descriptor {
            true => json!({"$ref": "#/components/contentDescriptors/Big"}),
            false => json!({"name": "p", "schema": {"$ref": "#/components/schemas/Big"}}),
        };
        let methods: Vec<Value> = (0..methods)
            .map(|i| json!({"name": format!("m{i}"), "params": [param]}))
            .collect();
        json!({"openrpc": "1.3.2", "info": {"title": "t", "version": "1"}, "methods": methods,
               "components": {"schemas": {"Big": big}, "contentDescriptors": {"Big": {"name": "p", "schema": big}}}})
        .to_string()
    }

    /// What a method carries is counted in bytes, not only in components: one large
    /// component named by every method cannot be copied once per method.
    #[test]
    fn schema_bytes_are_budgeted_per_method_and_per_service() {
        let limits = SpecLimits::default();
        for descriptor in [true, false] {
            let over = parse_service("t", &spec(50, 2 << 20, descriptor), String::new(), &limits).unwrap();
            assert!(
                over.capabilities.is_empty(),
                "2 MiB per method is over the per-method limit"
            );
            assert_eq!(over.warnings.len(), 50, "{:?}", &over.warnings[..1]);
            let some = parse_service("t", &spec(100, 600 << 10, descriptor), String::new(), &limits).unwrap();
            let kept = some.capabilities.len();
            assert!(
                (20..100).contains(&kept),
                "{kept} methods of 600 KiB fit in 32 MiB in all"
            );
        }
    }
}
