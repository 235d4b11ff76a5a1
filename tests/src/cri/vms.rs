//! Finding a pod's VM and checking that a test left nothing behind, scoped to
//! the pods the test created: other tests (or other people's) may run VMs on
//! the same host at the same time, so the global checks of [`crate::leaks`]
//! would see theirs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::leaks;

/// A pod's QEMU process and the shim's run directory for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    pub pid: u32,
    pub run_dir: PathBuf,
}

/// The QEMU of sandbox `pod` (the shim names it `sandbox-<id>`), if running.
pub fn vm_of(pod: &str) -> Option<Vm> {
    let name = format!("-name sandbox-{pod} ");
    leaks::processes_mentioning(&name)
        .into_iter()
        .find(|(_, cmd)| cmd.starts_with("qemu-system") || cmd.contains("/qemu-system"))
        .map(|(pid, cmd)| {
            // Helper sockets live in <run_dir>/vm/.
            let run_dir = cmd
                .split(' ')
                .find_map(|w| {
                    let p = w.strip_prefix("unix:").unwrap_or(w);
                    let p = p.split(',').next()?;
                    let p = Path::new(p);
                    (p.starts_with(leaks::RUN_ROOT) && p.parent()?.ends_with("vm"))
                        .then(|| p.parent()?.parent().map(Path::to_path_buf))
                        .flatten()
                })
                .unwrap_or_default();
            Vm { pid, run_dir }
        })
}

/// A pod id and its VM as first seen.
type Recorded = (String, Option<Vm>);

/// Pods (and their run directories) a test created, for the leak check.
#[derive(Clone, Default)]
pub struct Tracker {
    inner: Arc<Mutex<Vec<Recorded>>>,
}

impl Tracker {
    /// Records `pod` and, if its VM is up, the VM's run directory.
    pub fn record(&self, pod: &str) {
        let vm = vm_of(pod);
        if let Ok(mut v) = self.inner.lock() {
            v.push((pod.to_owned(), vm));
        }
    }

    /// What is left of the recorded pods, and any process mentioning `scope`
    /// (the test containerd's directory: its shims, registry, ...).
    pub fn leftovers(&self, scope: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for (pid, cmd) in leaks::processes_mentioning(&scope.to_string_lossy()) {
            if !cmd.contains("containerd --config") {
                out.push(format!("process {pid}: {cmd}"));
            }
        }
        let pods = self.inner.lock().map(|v| v.clone()).unwrap_or_default();
        for (pod, vm) in pods {
            if let Some(now) = vm_of(&pod) {
                out.push(format!("VM of pod {pod}: pid {}", now.pid));
            }
            let Some(dir) = vm.map(|v| v.run_dir).filter(|d| !d.as_os_str().is_empty()) else {
                continue;
            };
            let d = format!("{}/", dir.display());
            for (pid, cmd) in leaks::processes_mentioning(&d) {
                out.push(format!("process {pid}: {cmd}"));
            }
            for m in leaks::mounts_under(&d) {
                out.push(format!("mount {m}"));
            }
            if dir.exists() {
                out.push(format!("directory {}", dir.display()));
            }
        }
        out
    }

    /// Waits briefly for teardown, then returns what is left.
    pub fn settle_and_check(&self, scope: &Path) -> Vec<String> {
        let _ = crate::wait_until(std::time::Duration::from_secs(10), || {
            self.leftovers(scope).is_empty()
        });
        self.leftovers(scope)
    }
}
