//! What procfs says about one host process.

use std::path::Path;

/// CPU, memory and threads of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub pss_bytes: u64,
    pub threads: u64,
}

/// The VM's processes (QEMU and helpers) from the hypervisor's state file.
pub fn vm_processes(vm_dir: &Path) -> Vec<(String, u32)> {
    let Ok(text) = std::fs::read_to_string(hypervisor::state::state_path(vm_dir)) else {
        return Vec::new();
    };
    serde_json::from_str::<hypervisor::state::StateFile>(&text)
        .map(|s| s.processes.into_iter().map(|p| (p.name, p.pid)).collect())
        .unwrap_or_default()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime (seconds) and threads from `/proc/<pid>/stat`.
pub fn parse_stat(stat: &str) -> Option<(f64, u64)> {
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ')': state(0) ... utime(11) stime(12) ... num_threads(17).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    let threads: u64 = f.get(17)?.parse().ok()?;
    Some(((utime + stime) as f64 / clock_ticks(), threads))
}

/// A `Name:   123 kB` line's value in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|k| k * 1024)
}

/// The process's stats, or `None` when it is gone.
pub fn stats(pid: u32) -> Option<ProcStats> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (cpu_seconds, threads) = parse_stat(&stat)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Some(ProcStats {
        cpu_seconds,
        rss_bytes: kib_field(&status, "VmRSS:").unwrap_or(0),
        pss_bytes: kib_field(&rollup, "Pss:").unwrap_or(0),
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_an_odd_command_name() {
        let stat = "42 (qemu (x) y) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1234 0 0";
        let (cpu, threads) = parse_stat(stat).expect("parses");
        assert!((cpu - 300.0 / clock_ticks()).abs() < 1e-9);
        assert_eq!(threads, 7);
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_has_memory_and_threads() {
        let s = stats(std::process::id()).expect("self");
        assert!(s.rss_bytes > 0 && s.threads >= 1, "{s:?}");
    }
}
