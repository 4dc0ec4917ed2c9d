//! Runs as SQLite rows: the columns read back, and id bounds for time filters.

use rusqlite::Row;

use super::{Run, RunStatus};
use crate::intent::Surface;
use crate::policy::Verdict;

/// The smallest UUIDv7 (as text) created at or after `ms` (Unix milliseconds).
pub(super) fn uuid_v7_floor(ms: i64) -> String {
    let ms = ms.clamp(0, (1 << 48) - 1) as u64;
    format!("{:08x}-{:04x}-7000-8000-000000000000", ms >> 16, ms & 0xffff)
}

pub(super) const COLUMNS: &str =
    "id, parent_id, name, surface, principal, chain, context, claims, service, method, input_sha256,
    input, input_truncated, idempotency_key, decision, rule, approvers, status, result, result_truncated, error,
    approver, decision_note, created_at, started_at, finished_at, expires_at, replay_of, cancelled_by, trace";

pub(super) fn from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    let json_list = |text: String| serde_json::from_str::<Vec<String>>(&text).unwrap_or_default();
    let status: String = row.get(17)?;
    Ok(Run {
        id: row.get(0)?,
        parent_id: row.get(1)?,
        name: row.get(2)?,
        surface: Surface::parse(&row.get::<_, String>(3)?).unwrap_or(Surface::Openrpc),
        principal: row.get(4)?,
        chain: json_list(row.get(5)?),
        context: row.get::<_, i64>(6)? as u64,
        claims: row
            .get::<_, String>(7)?
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect(),
        service: row.get(8)?,
        method: row.get(9)?,
        input_sha256: row.get(10)?,
        input: row.get(11)?,
        input_truncated: row.get(12)?,
        idempotency_key: row.get(13)?,
        decision: Verdict::parse(&row.get::<_, String>(14)?).unwrap_or(Verdict::Deny),
        rule: row.get(15)?,
        approvers: json_list(row.get(16)?),
        status: RunStatus::parse(&status).unwrap_or(RunStatus::Failed),
        result: row.get(18)?,
        result_truncated: row.get(19)?,
        error: row
            .get::<_, Option<String>>(20)?
            .and_then(|e| serde_json::from_str(&e).ok()),
        approver: row.get(21)?,
        decision_note: row.get(22)?,
        created_at: row.get(23)?,
        started_at: row.get(24)?,
        finished_at: row.get(25)?,
        expires_at: row.get(26)?,
        replay_of: row.get(27)?,
        cancelled_by: row.get(28)?,
        trace: row.get(29)?,
    })
}
