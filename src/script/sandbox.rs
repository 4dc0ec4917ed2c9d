//! The Rhai sandbox a script runs in, on a blocking thread: no filesystem, network,
//! environment, process or module loading (Rhai has none of them unless a host adds them;
//! `import` finds no module, `eval` is disabled), limits on operations, call depth,
//! expression depth, string, array and map sizes, wall time and capability calls. A call
//! from the script is handed to the async side (`super::run`) and waited for: it goes
//! through the dispatcher like any other call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rhai::{Dynamic, Engine, EvalAltResult, FuncRegistration, Map, Module, Position, Scope};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::ScriptLimits;
use crate::intent::Outcome;

/// One capability call the script asks for, and where its outcome goes.
pub struct CallRequest {
    pub capability: String,
    pub params: Option<Value>,
    /// The call's number in the script (0, 1, ...): its idempotency key's suffix.
    pub index: usize,
    pub reply: oneshot::Sender<(String, Outcome)>,
}

/// How a script ended, as the sandbox saw it.
pub struct Ended {
    pub value: Result<Value, String>,
    /// The run id of the call held for approval, when one ended the script.
    pub held: Option<String>,
    pub output: Vec<String>,
    pub output_truncated: bool,
    pub operations: u64,
    /// Whether a limit (operations, wall time, calls, sizes) stopped it.
    pub limited: bool,
}

/// What the script's calls and output came to.
#[derive(Default)]
struct Shared {
    output: Vec<String>,
    output_bytes: usize,
    output_truncated: bool,
    calls: usize,
    /// The script asked for more calls than it may make (not text a `throw` can fake).
    calls_exceeded: bool,
    held: Option<String>,
    operations: u64,
}

/// The terminate value that marks a held call (not an error of the script).
const HELD: &str = "hero:held";

/// Why a script is stopped when its time is over (or its caller went away).
const WALL_TIME: &str = "the script's wall time is over";

/// Runs `source` with `args` bound to `args`; `calls` reaches the dispatcher.
#[allow(clippy::too_many_arguments)]
pub fn execute(
    source: &str,
    args: Value,
    limits: &ScriptLimits,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
    calls: mpsc::Sender<CallRequest>,
    services: Vec<(String, Vec<(String, String)>)>,
) -> Ended {
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut engine = Engine::new();
    // Nothing is evaluated ahead of time (a pure-looking call is still a call).
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.disable_symbol("eval");
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(limits.max_string_bytes);
    engine.set_max_array_size(limits.max_array_len);
    engine.set_max_map_size(limits.max_map_len);
    engine.set_max_modules(0);
    // With each value bounded by the size limits above, this bounds what one scope holds.
    engine.set_max_variables(256);
    engine.set_max_functions(1_000);
    let operations = Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let (operations, cancelled) = (operations.clone(), cancelled.clone());
        engine.on_progress(move |ops| {
            operations.store(ops, Ordering::Relaxed);
            if ops % 256 == 0 && (cancelled.load(Ordering::Relaxed) || Instant::now() >= deadline) {
                return Some(Dynamic::from(WALL_TIME));
            }
            None
        });
    }
    let max_output = limits.max_output_bytes;
    for debug in [false, true] {
        let shared = shared.clone();
        let capture = move |text: &str| {
            let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
            if s.output_bytes + text.len() > max_output {
                s.output_truncated = true;
                return;
            }
            s.output_bytes += text.len();
            s.output.push(text.to_owned());
        };
        match debug {
            false => drop(engine.on_print(capture)),
            true => drop(engine.on_debug(move |text, _, _| capture(text))),
        }
    }
    let caller = Caller {
        calls,
        shared: shared.clone(),
        max_calls: limits.max_calls,
        deadline,
        cancelled,
    };
    // `call` is Rhai's own keyword (it calls a function pointer): a capability by its name
    // is `invoke("svc.method", #{...})`.
    {
        let (with_params, without) = (caller.clone(), caller.clone());
        engine.register_fn("invoke", move |capability: &str, params: Map| {
            with_params.call(capability, Some(params))
        });
        engine.register_fn("invoke", move |capability: &str| without.call(capability, None));
    }
    // `svc::method_name(#{...})`: one static module per service the caller may see.
    for (service, methods) in services {
        let mut module = Module::new();
        for (function, capability) in methods {
            let (with_params, with) = (caller.clone(), capability.clone());
            FuncRegistration::new(function.clone())
                .with_volatility(true)
                .set_into_module(&mut module, move |params: Map| with_params.call(&with, Some(params)));
            let (without, with) = (caller.clone(), capability);
            FuncRegistration::new(function)
                .with_volatility(true)
                .set_into_module(&mut module, move || without.call(&with, None));
        }
        engine.register_static_module(service, module.into());
    }
    let mut scope = Scope::new();
    let args = rhai::serde::to_dynamic(&args).unwrap_or(Dynamic::UNIT);
    scope.push_constant("args", args);
    let result = engine.eval_with_scope::<Dynamic>(&mut scope, source);
    let mut shared = std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner()));
    shared.operations = operations.load(Ordering::Relaxed);
    let mut limited = false;
    let value = match result {
        Ok(value) => to_json(&value),
        Err(error) => {
            // A held call ends the script through an error, wrapped by whatever called it.
            if shared.held.is_some() {
                Ok(Value::Null)
            } else {
                limited = matches!(
                    &*error,
                    EvalAltResult::ErrorTooManyOperations(_)
                        | EvalAltResult::ErrorTerminated(..)
                        | EvalAltResult::ErrorDataTooLarge(..)
                        | EvalAltResult::ErrorStackOverflow(_)
                        | EvalAltResult::ErrorTooManyModules(_)
                        | EvalAltResult::ErrorTooManyVariables(_)
                ) || shared.calls_exceeded;
                Err(describe(&error))
            }
        }
    };
    Ended {
        value,
        held: shared.held,
        output: shared.output,
        output_truncated: shared.output_truncated,
        operations: shared.operations,
        limited,
    }
}

/// An error of the script, as its author needs to read it (what, and where).
fn describe(error: &EvalAltResult) -> String {
    match error {
        EvalAltResult::ErrorTerminated(why, pos) => format!("stopped: {why} ({pos})"),
        EvalAltResult::ErrorTooManyOperations(pos) => format!("stopped: the operation limit was reached ({pos})"),
        other => other.to_string(),
    }
}

/// A value the script returned, as JSON.
fn to_json(value: &Dynamic) -> Result<Value, String> {
    rhai::serde::from_dynamic::<Value>(value).map_err(|e| format!("the script's value is not JSON: {e}"))
}

/// The bridge from the script's thread to the dispatcher.
#[derive(Clone)]
struct Caller {
    calls: mpsc::Sender<CallRequest>,
    shared: Arc<Mutex<Shared>>,
    max_calls: usize,
    deadline: Instant,
    cancelled: Arc<AtomicBool>,
}

impl Caller {
    /// One capability call: `#{ok: true, result, run_id}` or `#{ok: false, error: #{code,
    /// message, data}, run_id}`. A call held for approval ends the script.
    fn call(&self, capability: &str, params: Option<Map>) -> Result<Dynamic, Box<EvalAltResult>> {
        if self.cancelled.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return Err(EvalAltResult::ErrorTerminated(WALL_TIME.into(), Position::NONE).into());
        }
        let index = {
            let mut shared = self.shared.lock().unwrap_or_else(|p| p.into_inner());
            if shared.calls >= self.max_calls {
                shared.calls_exceeded = true;
                return Err(format!("too many capability calls (at most {})", self.max_calls).into());
            }
            shared.calls += 1;
            shared.calls - 1
        };
        let params = match params {
            Some(map) => Some(
                rhai::serde::from_dynamic::<Value>(&Dynamic::from_map(map))
                    .map_err(|e| format!("params of {capability} are not JSON: {e}"))?,
            ),
            None => None,
        };
        let (reply, answer) = oneshot::channel();
        let request = CallRequest {
            capability: capability.to_owned(),
            params,
            index,
            reply,
        };
        self.calls
            .blocking_send(request)
            .map_err(|_| "the script was cancelled".to_owned())?;
        let (run_id, outcome) = answer
            .blocking_recv()
            .map_err(|_| "the script was cancelled".to_owned())?;
        let mut map = Map::new();
        map.insert("run_id".into(), run_id.clone().into());
        match outcome {
            Ok(raw) => {
                let value: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
                map.insert("ok".into(), true.into());
                map.insert("result".into(), rhai::serde::to_dynamic(&value)?);
            }
            Err(failure) if failure.error.code() == crate::error::code::APPROVAL_PENDING => {
                self.shared.lock().unwrap_or_else(|p| p.into_inner()).held = Some(run_id);
                return Err(EvalAltResult::ErrorTerminated(HELD.into(), Position::NONE).into());
            }
            Err(failure) => {
                let error = failure.error.to_jsonrpc(None);
                map.insert("ok".into(), false.into());
                map.insert("error".into(), rhai::serde::to_dynamic(&error)?);
            }
        }
        Ok(Dynamic::from_map(map))
    }
}
