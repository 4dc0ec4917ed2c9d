//! Capabilities: one method of one service, with its compiled params schema, result
//! schema, description and `x-hero-intent` (DESIGN section 9); the parser is in `parse`.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::error::{ExecError, ParamError};

/// Declares an open enum: known values in order of restrictiveness (last = most
/// restrictive); an unknown value is treated as the most restrictive one.
macro_rules! open_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
        pub enum $name { $(#[serde(rename = $text)] $variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Parses a value; unknown values become the most restrictive known one.
            pub fn parse(text: &str) -> Self {
                match text {
                    $($text => $name::$variant,)+
                    _ => *Self::ALL.last().expect("open enums are non-empty"),
                }
            }

            /// The wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
    };
}

open_enum!(
    /// What a method changes.
    SideEffect { Read = "read", MutateSelf = "mutate-self", MutateOthers = "mutate-others", Admin = "admin" }
);
open_enum!(
    /// Whose data a method reaches.
    Audience { SelfOnly = "self", Workspace = "workspace", Project = "project", CrossProject = "cross-project" }
);
open_enum!(
    /// Who a method expects the caller to be.
    IdentityRequirement {
        AnonymousOk = "anonymous-ok", EnrolledUser = "enrolled-user",
        SupportRole = "support-role", AdminRole = "admin-role",
    }
);
open_enum!(
    /// Whether a method may be retried.
    Idempotency { Safe = "safe", ReplaySafe = "replay-safe", ReplayUnsafe = "replay-unsafe" }
);

/// A method's `x-hero-intent` block, with defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeroIntent {
    pub side_effect_class: SideEffect,
    pub audience_scope: Audience,
    pub identity_requirement: IdentityRequirement,
    pub idempotency: Idempotency,
    /// Whether the service declared the block (`false`: every field is a default).
    pub declared: bool,
}

impl HeroIntent {
    /// The defaults for a method without the block: `mutate-others` + `replay-unsafe`,
    /// with the audience and identity requirement of an ordinary enrolled-user call.
    pub const UNDECLARED: HeroIntent = HeroIntent {
        side_effect_class: SideEffect::MutateOthers,
        audience_scope: Audience::Workspace,
        identity_requirement: IdentityRequirement::EnrolledUser,
        idempotency: Idempotency::ReplayUnsafe,
        declared: false,
    };

    /// Reads the block of a method object. Missing fields take the undeclared defaults.
    pub fn from_method(method: &Value) -> Self {
        let Some(block) = method.get("x-hero-intent").and_then(Value::as_object) else {
            return Self::UNDECLARED;
        };
        let field = |key: &str| block.get(key).and_then(Value::as_str);
        let d = Self::UNDECLARED;
        Self {
            side_effect_class: field("side_effect_class").map_or(d.side_effect_class, SideEffect::parse),
            audience_scope: field("audience_scope").map_or(d.audience_scope, Audience::parse),
            identity_requirement: field("identity_requirement")
                .map_or(d.identity_requirement, IdentityRequirement::parse),
            idempotency: field("idempotency").map_or(d.idempotency, Idempotency::parse),
            declared: true,
        }
    }
}

/// How a method takes its params (OpenRPC `paramStructure`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParamStructure {
    ByName,
    ByPosition,
    Either,
}

/// One method of one service, ready to validate and forward.
#[derive(Debug)]
pub struct Capability {
    /// `<service>.<method>`.
    pub name: String,
    pub service: String,
    pub method: String,
    pub summary: Option<String>,
    pub description: Option<String>,
    /// Param content descriptors, `$ref`s to `components/contentDescriptors` resolved.
    pub params: Vec<Value>,
    pub param_structure: ParamStructure,
    /// The service's `components`, shared by all its capabilities (never copied per method).
    pub(crate) components: Arc<Value>,
    /// The result content descriptor, if declared.
    pub result: Option<Value>,
    pub errors: Vec<Value>,
    pub intent: HeroIntent,
    pub(crate) validator: Option<jsonschema::Validator>,
    /// How a source's capability is sent (`None`: a hero service's `rpc.sock`).
    pub(crate) route: Option<Arc<crate::sources::Route>>,
    /// New or changed in its source since an admin accepted it: listed, refused.
    pub pending: bool,
    /// The source's own call timeout, replacing the default.
    pub timeout: Option<std::time::Duration>,
    /// Where the method stands in the service's document (`methods[index]`).
    pub(crate) index: usize,
    pub(crate) param_names: Vec<String>,
    /// The name, lowercased once for search.
    pub(crate) search_name: String,
    /// Summary and description, lowercased once for search.
    pub(crate) search_text: String,
}

impl Capability {
    /// Checks params against the method's schema; errors carry JSON pointers.
    pub fn validate(&self, params: Option<&Value>) -> Result<(), ExecError> {
        let invalid = |message: String| ExecError::invalid_params(format!("{}: {message}", self.name));
        let as_object = match params {
            None => Value::Object(Map::new()),
            Some(Value::Object(_)) if self.param_structure == ParamStructure::ByPosition => {
                return Err(invalid("takes its params by position (an array)".into()));
            }
            Some(obj @ Value::Object(_)) => obj.clone(),
            Some(Value::Array(_)) if self.param_structure == ParamStructure::ByName => {
                return Err(invalid("takes its params by name (an object)".into()));
            }
            Some(Value::Array(items)) => {
                if items.len() > self.param_names.len() {
                    return Err(invalid(format!(
                        "takes at most {} positional params, got {}",
                        self.param_names.len(),
                        items.len()
                    )));
                }
                Value::Object(self.param_names.iter().cloned().zip(items.iter().cloned()).collect())
            }
            Some(_) => return Err(invalid("params must be an object or an array".into())),
        };
        let Some(validator) = &self.validator else {
            return Ok(());
        };
        let details: Vec<ParamError> = validator
            .iter_errors(&as_object)
            .take(20)
            .map(|e| ParamError {
                pointer: e.instance_path().as_str().to_owned(),
                message: e.to_string(),
            })
            .collect();
        if details.is_empty() {
            return Ok(());
        }
        Err(ExecError::InvalidParams {
            message: format!("{} params do not match its schema: {}", self.name, details[0].message),
            details,
        })
    }

    /// The short form used by `catalog.list` and `catalog.search`.
    pub fn summary_json(&self) -> Value {
        let value = json!({
            "name": self.name,
            "service": self.service,
            "method": self.method,
            "summary": self.summary,
            "description": self.description,
            "x-hero-intent": self.intent,
        });
        self.mark(value)
    }

    /// A capability not accepted yet says so (`"new": true`, with what to do).
    fn mark(&self, mut value: Value) -> Value {
        if self.pending {
            value["new"] = json!(true);
            value["refused_until"] = json!(format!(
                "an admin runs sources.accept {{\"name\": \"{}\"}}",
                self.service
            ));
        }
        value
    }

    /// The full form used by `catalog.describe`.
    pub fn describe_json(&self) -> Value {
        let value = json!({
            "name": self.name,
            "service": self.service,
            "method": self.method,
            "summary": self.summary,
            "description": self.description,
            "params": self.params,
            "paramStructure": self.param_structure,
            "params_schema": self.params_schema(),
            "result": self.result,
            "errors": self.errors,
            "x-hero-intent": self.intent,
        });
        self.mark(value)
    }

    /// The params schema with the components it refers to (and only those) beside it, so it
    /// stands on its own (`describe`, MCP `inputSchema`).
    pub fn params_schema(&self) -> Value {
        let (schema, _) = super::parse::params_schema(&self.params);
        super::schema::with_components(&schema, &self.components)
    }

    /// The result schema, self-contained like [`Capability::params_schema`].
    pub fn result_schema(&self) -> Option<Value> {
        let schema = self.result.as_ref()?.get("schema")?;
        Some(super::schema::with_components(schema, &self.components))
    }
}

/// One discovered service and its capabilities.
#[derive(Debug)]
pub struct ServiceSpec {
    pub name: String,
    /// sha-256 (hex) of the raw `rpc.discover` result.
    pub fingerprint: String,
    /// The document as the service published it.
    pub document: Value,
    /// Capabilities by method name.
    pub capabilities: BTreeMap<String, Arc<Capability>>,
    /// Methods skipped and why (e.g. a method without a name).
    pub warnings: Vec<String>,
    /// The kind of source (`openapi`, `mcp`) it was built from; `None` for a hero service.
    pub source: Option<&'static str>,
}

pub use super::parse::{SpecLimits, parse_document, parse_service};

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r##"{
      "openrpc": "1.3.2", "info": {"title": "t", "version": "1"},
      "methods": [
        {"name": "add", "paramStructure": "by-name",
         "params": [{"name": "a", "required": true, "schema": {"$ref": "#/components/schemas/Num"}},
                    {"$ref": "#/components/contentDescriptors/B"}],
         "result": {"name": "sum", "schema": {"type": "integer"}},
         "x-hero-intent": {"side_effect_class": "read", "idempotency": "teleport"}},
        {"name": "legacy", "params": []},
        {"summary": "no name"}
      ],
      "components": {
        "schemas": {"Num": {"type": "integer", "minimum": 0}},
        "contentDescriptors": {"B": {"name": "b", "schema": {"type": "integer"}}}
      }
    }"##;

    #[test]
    fn parses_methods_refs_and_intent() {
        let spec = parse_service("calc", DOC, "f".into(), &SpecLimits::default()).unwrap();
        assert_eq!(spec.capabilities.len(), 2);
        assert_eq!(spec.warnings.len(), 1);
        let add = &spec.capabilities["add"];
        assert_eq!(add.name, "calc.add");
        assert_eq!(add.intent.side_effect_class, SideEffect::Read);
        // Unknown values are treated as the most restrictive known value.
        assert_eq!(add.intent.idempotency, Idempotency::ReplayUnsafe);
        add.validate(Some(&json!({"a": 1, "b": 2}))).unwrap();
        let err = add.validate(Some(&json!({"a": -1, "b": "x"}))).unwrap_err();
        let ExecError::InvalidParams { details, .. } = err else {
            panic!("{err:?}")
        };
        let pointers: Vec<_> = details.iter().map(|d| d.pointer.as_str()).collect();
        assert!(pointers.contains(&"/a") && pointers.contains(&"/b"), "{pointers:?}");
        assert!(add.validate(None).is_err(), "a is required");
        assert!(add.validate(Some(&json!([1, 2]))).is_err(), "by-name only");
        let legacy = &spec.capabilities["legacy"];
        assert_eq!(legacy.intent, HeroIntent::UNDECLARED);
        assert!(
            legacy.validate(Some(&json!([1]))).is_err(),
            "too many positional params"
        );
    }

    #[test]
    fn rejects_non_openrpc() {
        let limits = SpecLimits::default();
        assert!(parse_service("x", "[]", String::new(), &limits).is_err());
        assert!(parse_service("x", "{", String::new(), &limits).is_err());
    }
}
