//! Protocol adapters: they translate between a wire protocol and [`crate::command::Command`]s,
//! and nothing else. Policy, forwarding and records live behind [`crate::dispatch`]; errors
//! are rendered by [`crate::error::render`].

pub mod hero;
pub mod mcp;
pub mod openrpc;
pub mod rest;
