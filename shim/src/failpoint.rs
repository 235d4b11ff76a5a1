//! Fault injection at the phases of pod start, for tests.
//!
//! A test's containerd passes `KATA_SHIM_FAILPOINTS=<dir>` to its shims.
//! When a shim reaches phase `P` (see [`Phase`]) while the file `<dir>/P`
//! exists, it writes the sandbox id to `<dir>/P.reached` and waits until
//! `<dir>/P` is removed (at most [`MAX_WAIT`]): time for the test to
//! `kill -9` QEMU, a helper or the shim itself at exactly that point. Without
//! the variable (every real deployment) a gate costs one environment lookup.
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The environment variable naming the failpoint directory.
pub const ENV: &str = "KATA_SHIM_FAILPOINTS";
/// A gate never holds a pod start longer than this.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

/// Where pod start can be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Before the VM and its helpers are started.
    Boot,
    /// QEMU and the helpers run; the agent is not dialed yet.
    AgentDial,
    /// The agent answered; CreateSandbox is not sent yet.
    CreateSandbox,
    /// The rootfs is mounted; CreateContainer is not sent yet.
    CreateContainer,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Boot => "boot",
            Phase::AgentDial => "agent_dial",
            Phase::CreateSandbox => "create_sandbox",
            Phase::CreateContainer => "create_container",
        }
    }
}

/// Holds here while phase `phase` is armed (see the module doc).
pub async fn gate(phase: Phase, sandbox: &str) {
    if let Some(dir) = std::env::var_os(ENV) {
        gate_in(&PathBuf::from(dir), phase, sandbox).await;
    }
}

async fn gate_in(dir: &Path, phase: Phase, sandbox: &str) {
    let armed = dir.join(phase.name());
    if !tokio::fs::try_exists(&armed).await.unwrap_or(false) {
        return;
    }
    let reached = dir.join(format!("{}.reached", phase.name()));
    if let Err(e) = tokio::fs::write(&reached, sandbox).await {
        tracing::warn!(error = %e, path = %reached.display(), "failpoint");
        return;
    }
    tracing::warn!(sandbox, phase = phase.name(), "held at a test failpoint");
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    while tokio::fs::try_exists(&armed).await.unwrap_or(false)
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_armed_phase_holds_until_disarmed_and_others_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_path_buf();
        // Not armed: passes at once.
        tokio::time::timeout(Duration::from_secs(1), gate_in(&d, Phase::Boot, "sb"))
            .await
            .expect("an unarmed phase does not hold");
        std::fs::write(dir.path().join("create_sandbox"), "").expect("arm");
        let held = tokio::spawn(async move { gate_in(&d, Phase::CreateSandbox, "sb1").await });
        let reached = dir.path().join("create_sandbox.reached");
        for _ in 0..100 {
            if reached.exists() {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(std::fs::read_to_string(&reached).expect("reached"), "sb1");
        assert!(!held.is_finished(), "held while armed");
        std::fs::remove_file(dir.path().join("create_sandbox")).expect("disarm");
        tokio::time::timeout(Duration::from_secs(1), held)
            .await
            .expect("released once disarmed")
            .expect("gate task");
    }
}
