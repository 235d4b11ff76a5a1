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

/// Everything the shim leaves on the host for any sandbox: processes of
/// QEMU / helpers / shim, mounts and directories under the run root.
pub fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    for needle in ["qemu-system", "virtiofsd", "vhost-device-vsock", "containerd-shim-kata-v2"] {
        for (pid, cmd) in processes_mentioning(needle) {
            out.push(format!("process {pid}: {cmd}"));
        }
    }
    for m in mounts_under(RUN_ROOT) {
        out.push(format!("mount {m}"));
    }
    if let Ok(entries) = std::fs::read_dir(RUN_ROOT) {
        for e in entries.flatten() {
            out.push(format!("directory {}", e.path().display()));
        }
    }
    out
}

/// Waits briefly for teardown to finish, then returns what is left.
pub fn settle_and_check() -> Vec<String> {
    let _ = crate::wait_until(std::time::Duration::from_secs(10), || leftovers().is_empty());
    let left = leftovers();
    let _ = Path::new(RUN_ROOT);
    left
}
