//! Process attributes applied just before exec: rlimits and capabilities.
use protocols::oci::{LinuxCapabilities, POSIXRlimit};

use super::error::{last_os, Res, StepError};

const CAPS: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The capability number of "CAP_XXX" (or "XXX").
pub fn cap_number(name: &str) -> Option<u32> {
    let name = name.strip_prefix("CAP_").unwrap_or(name);
    CAPS.iter()
        .position(|c| c.eq_ignore_ascii_case(name))
        .map(|i| i as u32)
}

/// 64-bit mask of named capabilities; unknown names are reported.
fn mask(names: &[String], warn: &mut dyn FnMut(String)) -> u64 {
    let mut m = 0u64;
    for n in names {
        match cap_number(n) {
            Some(c) => m |= 1 << c,
            None => warn(format!("unknown capability {n:?} ignored")),
        }
    }
    m
}

fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(CAPS.len() as u32 - 1)
}

pub fn set_rlimits(rlimits: &[POSIXRlimit]) -> Res<()> {
    for r in rlimits {
        let resource = match r.Type.as_str() {
            "RLIMIT_CPU" => libc::RLIMIT_CPU,
            "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
            "RLIMIT_DATA" => libc::RLIMIT_DATA,
            "RLIMIT_STACK" => libc::RLIMIT_STACK,
            "RLIMIT_CORE" => libc::RLIMIT_CORE,
            "RLIMIT_RSS" => libc::RLIMIT_RSS,
            "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
            "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
            "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
            "RLIMIT_AS" => libc::RLIMIT_AS,
            "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
            "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
            "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
            "RLIMIT_NICE" => libc::RLIMIT_NICE,
            "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
            "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
            other => return Err(StepError::Spec(format!("unknown rlimit {other:?}"))),
        };
        let lim = libc::rlimit {
            rlim_cur: r.Soft,
            rlim_max: r.Hard,
        };
        // SAFETY: setrlimit reads a valid rlimit struct.
        if unsafe { libc::setrlimit(resource, &lim) } < 0 {
            return Err(last_os(format!("setrlimit {}", r.Type)));
        }
    }
    Ok(())
}

/// Before changing user: drops what the bounding set excludes and keeps
/// the permitted set across setuid.
pub fn prepare(caps: Option<&LinuxCapabilities>, warn: &mut dyn FnMut(String)) -> Res<()> {
    let Some(caps) = caps else { return Ok(()) };
    let bounding = mask(&caps.Bounding, warn);
    for cap in 0..=last_cap() {
        if bounding & (1 << cap) == 0 {
            // SAFETY: prctl with integer arguments.
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } < 0 {
                return Err(last_os(format!("dropping capability {cap}")));
            }
        }
    }
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    Ok(())
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// After changing user: sets the effective, permitted, inheritable and ambient sets.
pub fn apply(caps: Option<&LinuxCapabilities>, warn: &mut dyn FnMut(String)) -> Res<()> {
    let Some(caps) = caps else { return Ok(()) };
    let (e, p, i) = (
        mask(&caps.Effective, warn),
        mask(&caps.Permitted, warn),
        mask(&caps.Inheritable, warn),
    );
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: e as u32,
            permitted: p as u32,
            inheritable: i as u32,
        },
        CapData {
            effective: (e >> 32) as u32,
            permitted: (p >> 32) as u32,
            inheritable: (i >> 32) as u32,
        },
    ];
    // SAFETY: capset reads a v3 header and two data structs, all valid for the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } < 0 {
        return Err(last_os("capset"));
    }
    for name in &caps.Ambient {
        let Some(cap) = cap_number(name) else {
            continue;
        };
        // SAFETY: prctl with integer arguments.
        let r = unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                cap as libc::c_ulong,
                0,
                0,
            )
        };
        if r < 0 {
            warn(format!(
                "ambient capability {name}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(cap_number("CAP_CHOWN"), Some(0));
        assert_eq!(cap_number("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(cap_number("SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(cap_number("CAP_BOGUS"), None);
    }
}
