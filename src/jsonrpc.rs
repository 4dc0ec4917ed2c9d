//! JSON-RPC 2.0 framing: parsing requests (single and batch) and building responses.
//!
//! The parser is strict about the envelope (DESIGN section 3) and lenient about
//! nothing: a request that is not valid JSON-RPC 2.0 gets -32600 with the id
//! preserved whenever one could be read.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::error::ExecError;

/// One parsed JSON-RPC request. `id == None` means a notification.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: Option<Value>,
    pub method: String,
    pub params: Option<Value>,
}

/// A request that is not valid JSON-RPC 2.0, with whatever id could be recovered.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub id: Value,
    pub reason: String,
}

impl Invalid {
    /// The -32600 error to answer with.
    pub fn error(&self) -> ExecError {
        ExecError::InvalidRequest(self.reason.clone())
    }
}

/// The body of a `POST /rpc`, after framing.
#[derive(Debug)]
pub enum Incoming {
    /// A single request (or an invalid one).
    Single(Result<Request, Invalid>),
    /// A non-empty batch; each element parsed independently.
    Batch(Vec<Result<Request, Invalid>>),
}

/// Frames a request body. `Err` is a whole-body error (parse error, empty or oversized batch).
pub fn parse_body(body: &[u8], max_batch: usize) -> Result<Incoming, ExecError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| ExecError::Parse(e.to_string()))?;
    match value {
        Value::Array(items) if items.is_empty() => Err(ExecError::InvalidRequest("empty batch".into())),
        Value::Array(items) if items.len() > max_batch => Err(ExecError::InvalidRequest(format!(
            "batch of {} requests exceeds the limit of {max_batch}",
            items.len()
        ))),
        Value::Array(items) => Ok(Incoming::Batch(items.into_iter().map(parse_request).collect())),
        other => Ok(Incoming::Single(parse_request(other))),
    }
}

/// Validates one request object. On failure returns the id to answer with (or null).
pub fn parse_request(value: Value) -> Result<Request, Invalid> {
    let Value::Object(mut obj) = value else {
        return Err(Invalid {
            id: Value::Null,
            reason: "a request must be a JSON object".into(),
        });
    };

    // Recover the id first, so even an invalid request is answered with its own id.
    let id = obj.remove("id");
    let reply_id = match &id {
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => v.clone(),
        _ => Value::Null,
    };
    let invalid = |reason: &str| {
        Err(Invalid {
            id: reply_id.clone(),
            reason: reason.to_owned(),
        })
    };
    if let Some(id) = &id
        && !matches!(id, Value::String(_) | Value::Number(_) | Value::Null)
    {
        return invalid("id must be a string, a number or null");
    }
    match obj.remove("jsonrpc") {
        Some(Value::String(v)) if v == "2.0" => {}
        _ => return invalid("jsonrpc must be exactly \"2.0\""),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) if !m.is_empty() => m,
        _ => return invalid("method must be a non-empty string"),
    };
    let params = match obj.remove("params") {
        None => None,
        Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
        Some(_) => return invalid("params must be an object or an array"),
    };
    if let Some(extra) = obj.keys().next() {
        return invalid(&format!("unknown member {extra:?} in request"));
    }
    Ok(Request { id, method, params })
}

/// The id of a single request in `body`, when it has a valid one (else null): so an error
/// made before the request was parsed in full still answers the request's id.
pub fn request_id(body: &[u8]) -> Value {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<Value>,
    }
    match serde_json::from_slice::<IdOnly>(body) {
        Ok(IdOnly {
            id: Some(id @ (Value::String(_) | Value::Number(_))),
        }) => id,
        _ => Value::Null,
    }
}

/// A success response. The result is embedded verbatim.
pub fn success(id: &Value, result: &RawValue) -> Box<RawValue> {
    #[derive(Serialize)]
    struct Success<'a> {
        jsonrpc: &'static str,
        id: &'a Value,
        result: &'a RawValue,
    }
    raw(&Success {
        jsonrpc: "2.0",
        id,
        result,
    })
}

/// An error response; `run_id` goes into `error.data` when a run exists.
pub fn failure(id: &Value, error: &ExecError, run_id: Option<&str>) -> Box<RawValue> {
    raw(&json!({ "jsonrpc": "2.0", "id": id, "error": error.to_jsonrpc(run_id) }))
}

/// Serializes a value that cannot fail to serialize (no non-string map keys).
pub fn raw<T: Serialize>(value: &T) -> Box<RawValue> {
    serde_json::value::to_raw_value(value).expect("JSON values always serialize")
}

/// An object without its null members (optional params left out rather than sent as null).
pub fn without_nulls(mut value: Value) -> Value {
    if let Value::Object(map) = &mut value {
        map.retain(|_, v| !v.is_null());
    }
    value
}

/// Builds a request to send to a target.
pub fn request(id: &str, method: &str, params: Option<&Value>) -> Value {
    let mut obj = Map::new();
    obj.insert("jsonrpc".into(), "2.0".into());
    obj.insert("id".into(), id.into());
    obj.insert("method".into(), method.into());
    if let Some(params) = params {
        obj.insert("params".into(), params.clone());
    }
    Value::Object(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_requests_keep_their_id() {
        let err = parse_request(json!({"jsonrpc": "1.0", "id": 7, "method": "x"})).unwrap_err();
        assert_eq!(err.id, json!(7));
        assert_eq!(err.error().code(), -32600);
        let err = parse_request(json!({"jsonrpc": "2.0", "id": "a", "method": "x", "params": 3})).unwrap_err();
        assert_eq!(err.id, json!("a"));
    }

    #[test]
    fn notifications_have_no_id() {
        let req = parse_request(json!({"jsonrpc": "2.0", "method": "x"})).unwrap();
        assert_eq!(req.id, None);
        let req = parse_request(json!({"jsonrpc": "2.0", "method": "x", "id": null})).unwrap();
        assert_eq!(req.id, Some(Value::Null));
    }

    #[test]
    fn body_framing() {
        assert_eq!(parse_body(b"{nope", 10).unwrap_err().code(), -32700);
        assert_eq!(parse_body(b"[]", 10).unwrap_err().code(), -32600);
        assert_eq!(parse_body(b"[1,2,3]", 2).unwrap_err().code(), -32600);
        match parse_body(br#"[1, {"jsonrpc":"2.0","method":"m","id":1}]"#, 10).unwrap() {
            Incoming::Batch(items) => {
                assert!(items[0].is_err());
                assert!(items[1].is_ok());
            }
            other => panic!("expected a batch, got {other:?}"),
        }
    }
}
