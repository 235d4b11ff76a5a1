//! Zombie reaping for PID 1: one SIGCHLD handler reaps every child with
//! `waitpid(-1)` and hands each exit status to whoever watches that pid.
//! Statuses of pids nobody watches (yet) are kept for a late watcher, so a
//! process that exits before its spawner registers it is not lost.
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Unclaimed statuses kept at most (orphans reparented to PID 1 land here).
const MAX_UNCLAIMED: usize = 4096;

/// An exit status as the kata API reports it: the exit code, or 128 + signal.
pub type ExitStatus = i32;

#[derive(Default)]
struct Inner {
    watchers: HashMap<i32, watch::Sender<Option<ExitStatus>>>,
    unclaimed: HashMap<i32, ExitStatus>,
}

/// Shared handle on the reaper's registry.
#[derive(Clone, Default)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    /// Starts the SIGCHLD loop on the current tokio runtime.
    pub fn start() -> std::io::Result<Reaper> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    tracing::error!("SIGCHLD stream ended");
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// Runs `spawn` (which starts a child and returns its pid) and watches
    /// the child, atomically with respect to the reaper: a status kept for an
    /// earlier process with the same (recycled) pid cannot be mistaken for
    /// the new child's.
    pub fn spawn(
        &self,
        spawn: impl FnOnce() -> std::io::Result<i32>,
    ) -> std::io::Result<(i32, watch::Receiver<Option<ExitStatus>>)> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let pid = spawn()?;
        // The child cannot have been dispatched yet: we hold the lock.
        inner.unclaimed.remove(&pid);
        let (tx, rx) = watch::channel(None);
        inner.watchers.insert(pid, tx);
        Ok((pid, rx))
    }

    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(nix::Error::ECHILD) => return,
                Ok(_) => continue,
                Err(nix::Error::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "waitpid");
                    return;
                }
            };
            self.dispatch(pid, status);
        }
    }

    fn dispatch(&self, pid: i32, status: ExitStatus) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = inner.watchers.remove(&pid) {
            tracing::debug!(pid, status, "child exited");
            let _ = tx.send(Some(status));
            return;
        }
        if inner.unclaimed.len() >= MAX_UNCLAIMED {
            inner.unclaimed.clear();
        }
        inner.unclaimed.insert(pid, status);
    }
}

/// Waits for a watched process's exit status.
pub async fn wait_exit(mut rx: watch::Receiver<Option<ExitStatus>>) -> ExitStatus {
    loop {
        if let Some(status) = *rx.borrow_and_update() {
            return status;
        }
        if rx.changed().await.is_err() {
            // The sender is gone: use what it left, else report a kill.
            return rx.borrow().unwrap_or(128 + libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(r: &Reaper, script: &str) -> std::io::Result<ExitStatus> {
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", script]);
        // The child is never waited through `Child`: the reaper owns that.
        let (_pid, rx) = r.spawn(|| cmd.spawn().map(|c| c.id() as i32))?;
        while rx.borrow().is_none() {
            r.reap_all();
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(wait_exit(rx).await)
    }

    #[tokio::test]
    async fn statuses_are_exit_codes_or_128_plus_signal() -> std::io::Result<()> {
        let r = Reaper::default();
        assert_eq!(run(&r, "exit 7").await?, 7);
        assert_eq!(run(&r, "kill -9 $$").await?, 128 + 9);
        // An exit nobody watches is kept, bounded.
        r.dispatch(999_999, 1);
        assert_eq!(
            r.inner
                .lock()
                .map(|i| i.unclaimed.len())
                .unwrap_or_default(),
            1
        );
        Ok(())
    }
}
