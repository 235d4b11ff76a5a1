//! The guest agent is a binary crate (PID 1 of the VM), so the fuzz targets
//! cannot depend on it. Its pure parts are compiled in here from the agent's
//! own source files (`#[path]`), with stand-ins for the few crate items they
//! reach outside themselves; what is fuzzed is the agent's code, unchanged.
#![allow(dead_code, unused_imports, clippy::all)]

#[path = "../../guest/agent/src/error.rs"]
mod error;

#[path = "../../guest/agent/src/mounts.rs"]
pub mod mounts;

/// Stand-in for the agent's `init` (module loading at boot).
mod init {
    pub fn wait_for_modules(_timeout: std::time::Duration) {}
}

pub mod runtime;
