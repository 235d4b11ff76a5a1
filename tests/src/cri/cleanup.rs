//! Removes every task and container of CRI's namespace through `ctr`, so a
//! test that failed half-way leaves no VM behind when its containerd stops.

use crate::Containerd;

/// Kills and deletes every task, then removes every container, in `k8s.io`.
pub fn remove_everything(ctd: &Containerd) {
    let ids = |args: &[&str]| -> Vec<String> {
        ctd.ctr_in(super::NAMESPACE, args)
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(|l| l.trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    };
    let tasks = ids(&["tasks", "ls", "-q"]);
    // App containers first, the sandbox (pause) tasks last: the VM goes with them.
    for id in &tasks {
        let _ = ctd.ctr_in(super::NAMESPACE, &["tasks", "kill", "-s", "SIGKILL", id]);
    }
    for id in &tasks {
        let _ = ctd.ctr_in(super::NAMESPACE, &["tasks", "delete", "-f", id]);
    }
    for id in ids(&["containers", "ls", "-q"]) {
        let _ = ctd.ctr_in(super::NAMESPACE, &["containers", "rm", &id]);
    }
}
