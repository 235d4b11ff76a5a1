//! No orphan daemons: a daemon that serves nothing — no container, no VM,
//! no Sandbox API pod, no boot under way — for [`IDLE_EXIT`] exits. That
//! covers a pod that was never created (containerd failed between `start`
//! and Create, or spoke an API this shim lacks) and one whose create failed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::TaskService;

/// How long a daemon may serve nothing. containerd sends Create (or
/// CreateSandbox) right after `start`, so a daemon idle this long has been
/// abandoned.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);

impl TaskService {
    /// True when the daemon has nothing to serve.
    pub fn is_idle(&self) -> bool {
        if self.pod.get().is_some() || !self.containers().is_empty() {
            return false;
        }
        // A held lock means a boot or teardown is under way.
        self.sandbox
            .try_lock()
            .map(|s| s.is_none())
            .unwrap_or(false)
    }
}

/// Signals `svc.exit` once the daemon has been idle for `after`.
pub fn exit_when_idle(svc: Arc<TaskService>, after: Duration) {
    let tick = (after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    tokio::spawn(async move {
        let mut idle_since: Option<Instant> = None;
        loop {
            tokio::time::sleep(tick).await;
            if !svc.is_idle() {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= after {
                tracing::info!(
                    idle_ms = after.as_millis() as u64,
                    "no pod and no container to serve: exiting"
                );
                svc.exit.notify_one();
                return;
            }
        }
    });
}
