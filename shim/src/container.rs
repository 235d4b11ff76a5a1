//! A container the shim manages: its bundle, its init process and execs, and
//! the few facts about it the Task service needs after Create.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::process::Process;

/// A container the shim manages: its bundle, init process and execs.
pub struct Container {
    pub id: String,
    pub bundle: String,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Frozen by Pause (the agent's freezer, or the whole VM for the sandbox).
    pub paused: std::sync::atomic::AtomicBool,
    /// Has a memory limit, so a SIGKILL exit may be an OOM kill.
    pub memory_limited: std::sync::atomic::AtomicBool,
    /// Joins the pod's PID namespace instead of owning one: what its init
    /// leaves behind is killed when it exits (runc's KillAll).
    pub shares_pid_ns: std::sync::atomic::AtomicBool,
    /// Its spec has poststart/poststop hooks (read again from the bundle then).
    pub has_hooks: std::sync::atomic::AtomicBool,
}

impl Container {
    pub fn new(id: &str, bundle: &str, init: Process) -> Self {
        Self {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            paused: std::sync::atomic::AtomicBool::new(false),
            memory_limited: std::sync::atomic::AtomicBool::new(false),
            shares_pid_ns: std::sync::atomic::AtomicBool::new(false),
            has_hooks: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::SeqCst)
    }
}
