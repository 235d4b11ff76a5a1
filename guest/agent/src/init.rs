//! PID 1 duties: the base filesystems, the console, kernel modules, the
//! loopback interface and power-off.
use std::ffi::CString;
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::fcntl::{open, OFlag};
use nix::kmod::{finit_module, ModuleInitFlags};
use nix::mount::{mount, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::dup2;

/// Module files in load order (dependencies first), written by the image builder.
pub const MODULE_LIST: &str = "/lib/modules/load-order";

struct BaseMount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
const NOSUID_NODEV_NOEXEC: MsFlags = NOSUID_NODEV.union(MsFlags::MS_NOEXEC);

const BASE_MOUNTS: [BaseMount; 7] = [
    BaseMount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    BaseMount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    BaseMount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("gid=5,mode=0620,ptmxmode=0666"),
    },
    BaseMount {
        source: "shm",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=1777"),
    },
    BaseMount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: Some("mode=0755"),
    },
    BaseMount {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
];

/// Mounts the base filesystems and points stdio at /dev/console.
/// Runs before logging exists, so failures are collected and returned.
pub fn early_setup() -> Vec<String> {
    let mut problems = Vec::new();
    for m in &BASE_MOUNTS {
        if let Err(e) = fs::create_dir_all(m.target) {
            problems.push(format!("mkdir {}: {e}", m.target));
        }
        if let Err(e) = mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            if e != nix::Error::EBUSY {
                problems.push(format!("mount {} on {}: {e}", m.fstype, m.target));
            }
        }
    }
    match open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => {
            for target in 0..3 {
                let _ = dup2(fd, target);
            }
            if fd > 2 {
                let _ = nix::unistd::close(fd);
            }
        }
        Err(e) => problems.push(format!("open /dev/console: {e}")),
    }
    let _ = fs::create_dir_all(protocols::share::GUEST_SHARED_DIR);
    // The OOM killer must pick container processes, never the agent.
    if let Err(e) = fs::write("/proc/self/oom_score_adj", "-1000") {
        problems.push(format!("oom_score_adj: {e}"));
    }
    problems
}

fn load_module_file(path: &str, params: &str) -> crate::error::Result<()> {
    use crate::error::Error;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let params = CString::new(params)
        .map_err(|_| Error::InvalidArgument(format!("{path}: NUL in module parameters")))?;
    match finit_module(&file, &params, ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(Error::sys(path, e)),
    }
}

fn load_list(paths: &[&str], what: &str) {
    let t0 = Instant::now();
    let mut n = 0;
    for path in paths {
        let t = Instant::now();
        match load_module_file(path, "") {
            Ok(()) => {
                n += 1;
                let elapsed_us = t.elapsed().as_micros() as u64;
                tracing::debug!(module = path, elapsed_us, "module loaded");
            }
            Err(e) => tracing::warn!("loading module {e}"),
        }
    }
    let elapsed_ms = t0.elapsed().as_millis() as u64;
    tracing::info!(modules = n, elapsed_ms, "{what} kernel modules loaded");
}

/// Set once the modules loaded in the background are in.
static LATE_MODULES_DONE: Mutex<bool> = Mutex::new(false);
static LATE_MODULES_CV: Condvar = Condvar::new();

pub fn late_modules_done() {
    *LATE_MODULES_DONE
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = true;
    LATE_MODULES_CV.notify_all();
}

/// Loads the image's modules in the listed order (dependencies first). The
/// vsock chain (everything up to the last `*vsock*` module) is loaded now, so
/// the agent can listen; the rest (fuse, virtiofs, overlay) in a background
/// thread, overlapping the host's dial: storage mounts wait for it.
pub fn load_modules() {
    let Ok(list) = fs::read_to_string(MODULE_LIST) else {
        tracing::info!("no module list at {MODULE_LIST}");
        late_modules_done();
        return;
    };
    let paths: Vec<String> = list
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let split = paths
        .iter()
        .rposition(|p| p.contains("vsock"))
        .map_or(0, |i| i + 1);
    let (early, late) = paths.split_at(split);
    load_list(
        &early.iter().map(String::as_str).collect::<Vec<_>>(),
        "vsock",
    );
    let late: Vec<String> = late.to_vec();
    let spawned = std::thread::Builder::new()
        .name("modules".into())
        .spawn(move || {
            load_list(
                &late.iter().map(String::as_str).collect::<Vec<_>>(),
                "other",
            );
            late_modules_done();
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "module thread");
        late_modules_done();
    }
}

/// Waits (up to `timeout`) for the modules loaded in the background.
pub fn wait_for_modules(timeout: Duration) {
    let done = LATE_MODULES_DONE
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let r = LATE_MODULES_CV.wait_timeout_while(done, timeout, |d| !*d);
    if r.is_ok_and(|(_, t)| t.timed_out()) {
        tracing::warn!("kernel modules still loading after {timeout:?}");
    }
}

/// Loads a module the shim asked for by name, from the image's module directory.
pub fn load_module_by_name(name: &str, params: &str) {
    let path = format!("/lib/modules/{}.ko", name.replace('-', "_"));
    if let Err(e) = load_module_file(&path, params) {
        tracing::warn!(module = name, "loading module {e}");
    }
}

/// Free page reporting's threshold (free blocks of 2^order pages go back to
/// the host). Linux 6.1 sets it to `pageblock_order` when the balloon driver
/// registers, overriding the boot parameter; without hugetlb that is order
/// 10, so only free 4 MiB blocks were reported and the guest kept ~20 MiB
/// it had touched and freed during boot. 128 KiB blocks: most of what boot
/// frees, without a report for every page. `agent.page_reporting_order=N`
/// on the kernel command line chooses another.
const PAGE_REPORTING_ORDER: u32 = 5;
const PAGE_REPORTING_PARAM: &str = "/sys/module/page_reporting/parameters/page_reporting_order";

/// The value of `key=value` on a kernel command line (the first one).
pub fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Lowers the free page reporting threshold (no balloon device: a no-op).
pub fn tune_page_reporting(cmdline: &str) {
    let order = cmdline_param(cmdline, "agent.page_reporting_order")
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(PAGE_REPORTING_ORDER);
    if let Err(e) = fs::write(PAGE_REPORTING_PARAM, order.to_string()) {
        tracing::debug!(error = %e, "page reporting order unchanged");
    }
}

/// Brings `lo` up (containers share the VM's network namespace).
pub fn loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed, NUL-terminated ifreq; the
    // socket fd is fresh and owned only by the OwnedFd.
    unsafe {
        let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if sock < 0 {
            tracing::warn!("socket for lo: {}", std::io::Error::last_os_error());
            return;
        }
        let sock = <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr) == 0 {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &ifr) != 0 {
                tracing::warn!("bringing lo up: {}", std::io::Error::last_os_error());
            }
        }
    }
}

/// Syncs and powers the VM off; QEMU (run with -no-reboot) then exits.
pub fn power_off() {
    tracing::info!("powering off");
    nix::unistd::sync();
    let Err(e) = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    tracing::error!(error = %e, "power off failed");
}

#[cfg(test)]
mod tests {
    use super::cmdline_param;

    #[test]
    fn cmdline_param_matches_whole_keys_only() {
        let line = "quiet agent.log_vport=1025 agent.log=debug agent.log=warn";
        assert_eq!(cmdline_param(line, "agent.log"), Some("debug"));
        assert_eq!(cmdline_param(line, "agent.log_vport"), Some("1025"));
        assert_eq!(cmdline_param(line, "quiet"), None);
        assert_eq!(cmdline_param(line, "agent.page_reporting_order"), None);
    }
}
