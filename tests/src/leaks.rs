//! Leak checks: after a test, nothing of its sandbox may remain — no QEMU,
//! virtiofsd, vhost-device-vsock or shim process, no mount, no directory.

use std::path::Path;

/// Run directory root of the shim (`persist::RUN_ROOT`).
pub const RUN_ROOT: &str = "/run/kata-shim";

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmd.contains(needle) {
            found.push((pid, cmd));
        }
    }
    found
}

/// Mount points under `prefix`.
pub fn mounts_under(prefix: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// Everything the shim leaves on the host: processes of QEMU and helpers
/// (their command lines name the run root), shim daemons of this test's
/// containerd (theirs name its socket in `scope`), mounts and directories
/// under the run root.
pub fn leftovers(scope: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let scope = scope.to_string_lossy();
    for needle in [format!("{RUN_ROOT}/"), scope.into_owned()] {
        for (pid, cmd) in processes_mentioning(&needle) {
            if cmd.contains("containerd --config") {
                continue; // the test's containerd itself
            }
            out.push(format!("process {pid}: {cmd}"));
        }
    }
    for m in mounts_under(RUN_ROOT) {
        out.push(format!("mount {m}"));
    }
    if let Ok(entries) = std::fs::read_dir(RUN_ROOT) {
        // The host-wide guest CID leases (kernel vhost-vsock) stay by design.
        for e in entries.flatten().filter(|e| e.file_name() != "vsock-cids") {
            out.push(format!("directory {}", e.path().display()));
        }
    }
    out
}

/// Waits briefly for teardown to finish, then returns what is left.
pub fn settle_and_check(scope: &Path) -> Vec<String> {
    let _ = crate::wait_until(std::time::Duration::from_secs(10), || {
        leftovers(scope).is_empty()
    });
    leftovers(scope)
}
