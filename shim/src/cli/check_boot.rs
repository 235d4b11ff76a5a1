//! `check --boot`: boots one throw-away sandbox with the configuration, as a
//! pod would get it (same hypervisor, dialer and share mounter), and reports
//! how long it took until the agent had created the sandbox.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::sandbox::{BootParams, Sandbox, Seams, VsockDialer};
use crate::share::HostMounter;

use super::check::{Finding, Verdict};

/// Boots and stops a sandbox under `run_root`; the finding carries the time.
pub async fn boot(config: &Config, run_root: &Path, id: &str) -> (Finding, Option<f64>) {
    let hypervisor = hypervisor::Qemu::new();
    let t = Instant::now();
    let booted = Sandbox::boot(
        id,
        BootParams {
            hostname: "check",
            ..Default::default()
        },
        run_root,
        config,
        Seams {
            hypervisor: &hypervisor,
            dialer: &VsockDialer,
            mounter: Arc::new(HostMounter),
        },
    )
    .await;
    let secs = t.elapsed().as_secs_f64();
    match booted {
        Ok(sb) => {
            let version = match sb.agent.version().await {
                Ok(v) => format!("agent {}", v.agent_version),
                Err(e) => format!("agent version: {e}"),
            };
            if let Err(e) = sb.shutdown().await {
                tracing::warn!(sandbox = %id, error = %e, "check: stopping the test sandbox");
            }
            if let Err(e) = sb.mounter.teardown(&sb.paths).await {
                tracing::warn!(sandbox = %id, error = %e, "check: removing the test sandbox's share");
            }
            (
                Finding {
                    check: "boot",
                    verdict: Verdict::Ok,
                    detail: format!("test sandbox ready in {secs:.2} s ({version})"),
                },
                Some(secs),
            )
        }
        Err(e) => (
            Finding {
                check: "boot",
                verdict: Verdict::Fail,
                detail: format!("test sandbox failed after {secs:.2} s: {e}"),
            },
            None,
        ),
    }
}
