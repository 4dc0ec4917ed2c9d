//! The built-in rules (DESIGN sections 3 and 7), in one place: which names belong to the
//! executor, who may administer it, and who may see, decide or cancel a run. Policy files
//! govern capabilities; these govern the executor's own methods, on every surface.
//!
//! - Any authenticated principal may discover and search the catalog (filtered to what it
//!   may run) and see, wait for and cancel its own runs.
//! - A holder of one of a held run's approver claims sees that run while it waits, and may
//!   approve or reject it, unless the run is its own (nobody approves their own run,
//!   checked against the human when the caller acts for one, see [`is_own`]).
//! - Everything else (keys, policy, prune, other principals' runs) needs `executor.admin`,
//!   which full trust holds.

use crate::error::ExecError;
use crate::intent::Caller;
use crate::runs::{Run, RunStatus};

/// The claim that lets a principal manage keys, policy, and every run.
pub const ADMIN_CLAIM: &str = "executor.admin";

/// The claim that lets a principal act on behalf of a user (`X-Hero-User`).
pub const IMPERSONATE_CLAIM: &str = "executor.impersonate";

/// First segments that belong to the executor: no target or source may use them, and a
/// socket directory with such a name is never discovered or called.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "rpc", "execute", "catalog", "runs", "policy", "keys", "executor", "sources", "script",
];

/// Longest capability name, in bytes (service, dot and method).
pub const MAX_NAME_BYTES: usize = 256;

/// Whether `name` (a method or capability name) belongs to the executor.
pub fn is_reserved(name: &str) -> bool {
    let first = name.split('.').next().unwrap_or_default();
    RESERVED_NAMESPACES.contains(&first)
}

/// Whether `caller` holds `executor.admin`.
pub fn is_admin(caller: &Caller) -> bool {
    caller.claims.holds(ADMIN_CLAIM)
}

/// `executor.admin`, or a denial that says what `what` needs.
pub fn require_admin(caller: &Caller, what: &str) -> Result<(), ExecError> {
    if is_admin(caller) {
        return Ok(());
    }
    Err(ExecError::Denied(format!(
        "{what} needs the {ADMIN_CLAIM} claim; {} holds {}",
        caller.principal.id, caller.claims
    )))
}

/// Whether the run was asked for by the caller. A caller relayed for a human (`X-Hero-User`
/// on `ui.sock`: the console behind a node's router) is that human: the run is its own when the
/// human is anywhere in the run's chain, or when the same principal asked for it acting
/// as itself. Any other caller is every identity of its chain (the user it names too):
/// the run is its own when the two chains share one.
pub fn is_own(caller: &Caller, run: &Run) -> bool {
    match caller.user.as_ref().filter(|_| caller.relayed) {
        Some(human) => run.chain.contains(human) || (run.principal == caller.principal.id && run.chain.len() == 1),
        None => {
            let chain = caller.chain();
            run.principal == caller.principal.id || run.chain.iter().any(|id| chain.contains(id))
        }
    }
}

/// How `caller` is recorded as an approver or canceller: its chain, the human included.
pub fn actor(caller: &Caller) -> String {
    match &caller.user {
        Some(user) => format!("{} (for {user})", caller.principal.id),
        None => caller.principal.id.clone(),
    }
}

/// Whether `caller` decided `run` (approved or rejected it): it may see what it decided.
pub fn decided(caller: &Caller, run: &Run) -> bool {
    run.approver.as_deref() == Some(actor(caller).as_str())
}

/// Whether `caller` holds one of the claims that may decide `run`.
pub fn holds_approver_claim(caller: &Caller, run: &Run) -> bool {
    run.approvers.iter().any(|claim| caller.claims.holds(claim))
}

/// Whether the run belongs to the caller: the same principal and, when the caller acts
/// for a user (`X-Hero-User`), the same user.
pub fn is_callers(caller: &Caller, run: &Run) -> bool {
    run.principal == caller.principal.id && caller.user.as_ref().is_none_or(|user| run.chain.get(1) == Some(user))
}

/// Whether `caller` may see `run`: its own, any for an admin, one it decided, and a run
/// waiting for an approval the caller may give (while it waits: an approver who did not
/// decide it does not learn how it ended).
pub fn may_see(caller: &Caller, run: &Run) -> bool {
    is_callers(caller, run)
        || is_admin(caller)
        || decided(caller, run)
        || (run.status == RunStatus::AwaitingApproval && holds_approver_claim(caller, run))
}

/// The run as `caller` may read it: its outcome (result and error) only for the caller
/// whose run it is and for an admin; an approver who decided it sees the rest.
pub fn view(caller: &Caller, run: &Run) -> serde_json::Value {
    let mut value = run.to_json();
    if !(is_callers(caller, run) || is_admin(caller)) {
        value["result"] = serde_json::Value::Null;
        value["error"] = serde_json::Value::Null;
        value["outcome_withheld"] = true.into();
    }
    value
}

/// Whether `caller` may cancel `run`: its own, or any for an admin.
pub fn may_cancel(caller: &Caller, run: &Run) -> bool {
    is_callers(caller, run) || is_admin(caller)
}

/// Why `caller` may not decide `run`, if it may not.
pub fn may_decide(caller: &Caller, run: &Run) -> Result<(), ExecError> {
    if !holds_approver_claim(caller, run) {
        return Err(match run.approvers.is_empty() {
            true => ExecError::Conflict(format!("run {} does not wait for approval", run.id)),
            false => ExecError::Denied(format!(
                "deciding run {} needs one of the claims {}; {} holds {}",
                run.id,
                run.approvers.join(", "),
                caller.principal.id,
                caller.claims
            )),
        });
    }
    if is_own(caller, run) {
        return Err(ExecError::Denied("nobody approves their own run".into()));
    }
    Ok(())
}

/// Whether a capability or method name is acceptable: at most [`MAX_NAME_BYTES`], and no
/// control or bidirectional-formatting characters (which could make a name in a log, a
/// console or a prompt read as another).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "a capability name is at most {MAX_NAME_BYTES} bytes; this one has {}",
            name.len()
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || is_bidi_control(*c)) {
        return Err(format!(
            "a capability name may not contain the character U+{:04X}",
            c as u32
        ));
    }
    Ok(())
}

/// Unicode bidirectional formatting characters (UAX #9), and invisible characters that can
/// hide text (soft hyphen, joiners, invisible operators, interlinear annotation, tags).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("echo.counter.add").is_ok());
        assert!(check_name(&format!("echo.{}", "a".repeat(251))).is_ok());
        assert!(check_name(&format!("echo.{}", "a".repeat(252))).is_err());
        for bad in [
            "echo.e\u{202e}cho",
            "echo.a\u{7}b",
            "echo.a\nb",
            "echo.\u{2066}x",
            "echo.\u{200b}",
            "echo.a\u{e0041}",
            "echo.\u{2061}",
            "echo.so\u{ad}ft",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(is_reserved("runs.list") && is_reserved("script") && !is_reserved("hero_runs.list"));
    }
}
