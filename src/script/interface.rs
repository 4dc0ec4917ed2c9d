//! `catalog.interface`: what the caller may run, one line per capability, small enough for
//! a model's context: the function to call, typed params, result type, a one-line
//! description and the x-hero-intent, in Rhai syntax (or TypeScript-like or Python-like).

use serde_json::Value;

use crate::catalog::Capability;

/// The languages `catalog.interface` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rhai,
    TypeScript,
    Python,
}

impl Language {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "rhai" => Some(Self::Rhai),
            "typescript" | "ts" => Some(Self::TypeScript),
            "python" | "py" => Some(Self::Python),
            _ => None,
        }
    }
}

/// A method name as a script function: characters other than letters, digits and `_`
/// become `_` (`counter.add` -> `counter_add`).
pub fn function_name(method: &str) -> String {
    method
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

/// The interface of `caps`, one line each, after a short header saying how to call.
pub fn render(caps: &[&Capability], language: Language) -> String {
    let mut out = String::new();
    out.push_str(match language {
        Language::Rhai => {
            "// Call as svc::method(#{...}) or invoke(\"svc.method\", #{...}). Each returns #{ok, result, run_id}\n\
             // or #{ok: false, error: #{code, message, data}, run_id}; a call held for approval ends the\n\
             // script (status awaiting_approval). `args` holds script.run's args; print() is captured.\n"
        }
        Language::TypeScript => {
            "// Each call returns {ok, result, run_id} or {ok: false, error: {code, message, data}, run_id}.\n"
        }
        Language::Python => {
            "# Each call returns {ok, result, run_id} or {ok: False, error: {code, message, data}, run_id}.\n"
        }
    });
    for cap in caps {
        out.push_str(&line(cap, language));
        out.push('\n');
    }
    out
}

fn line(cap: &Capability, language: Language) -> String {
    let schema = cap.params_schema();
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut params = Vec::new();
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (name, prop) in props {
            let optional = !required.contains(&name.as_str());
            let ty = type_of(prop, language);
            params.push(match (language, optional) {
                (Language::Python, true) => format!("{name}: {ty} = None"),
                (Language::Python, false) => format!("{name}: {ty}"),
                (_, true) => format!("{name}?: {ty}"),
                (_, false) => format!("{name}: {ty}"),
            });
        }
    }
    let result = cap
        .result_schema()
        .map_or_else(|| "any".to_owned(), |r| type_of(&r, language));
    let intent = format!(
        "{}, {}",
        cap.intent.side_effect_class.as_str(),
        cap.intent.idempotency.as_str()
    );
    let description = cap
        .summary
        .as_deref()
        .or(cap.description.as_deref())
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(120)
        .collect::<String>();
    let new = if cap.pending {
        " NEW: refused until accepted"
    } else {
        ""
    };
    let function = function_name(&cap.method);
    match language {
        Language::Rhai => format!(
            "{}::{function}(#{{{}}}) -> {result}  // {description} [{intent}]{new}",
            cap.service,
            params.join(", ")
        ),
        Language::TypeScript => format!(
            "{}.{function}(params: {{{}}}): {result}  // {description} [{intent}]{new}",
            cap.service,
            params.join("; ")
        ),
        Language::Python => format!(
            "def {}_{function}({}) -> {result}:  # {description} [{intent}]{new}",
            cap.service,
            params.join(", ")
        ),
    }
}

/// A short type for a schema: scalars by name, arrays of their items, objects as maps;
/// `$ref`s named by their last segment.
fn type_of(schema: &Value, language: Language) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return reference.rsplit('/').next().unwrap_or("object").to_owned();
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let shown: Vec<String> = values.iter().take(6).map(Value::to_string).collect();
        return shown.join(" | ");
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("any"),
        _ => "any",
    };
    match (ty, language) {
        ("string", Language::Python) => "str".to_owned(),
        ("string", _) => "string".to_owned(),
        ("integer", Language::TypeScript) | ("number", Language::TypeScript) => "number".to_owned(),
        ("integer", _) => "int".to_owned(),
        ("number", _) => "float".to_owned(),
        ("boolean", Language::Python) => "bool".to_owned(),
        ("boolean", Language::TypeScript) => "boolean".to_owned(),
        ("boolean", _) => "bool".to_owned(),
        ("array", _) => {
            let item = schema
                .get("items")
                .map_or_else(|| "any".to_owned(), |i| type_of(i, language));
            match language {
                Language::Python => format!("list[{item}]"),
                _ => format!("{item}[]"),
            }
        }
        ("object", Language::Python) => "dict".to_owned(),
        ("object", Language::TypeScript) => "object".to_owned(),
        ("object", _) => "map".to_owned(),
        _ => "any".to_owned(),
    }
}
