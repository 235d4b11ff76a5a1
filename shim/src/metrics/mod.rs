//! Per-sandbox Prometheus metrics (text format 0.0.4), served by each shim
//! daemon on `<sandbox dir>/shim-monitor.sock` (HTTP `GET /metrics`), the
//! place Kata's shim serves them for `kata-monitor`; `containerd-shim-kata-v2
//! metrics` gathers every sandbox's on the node ([`gather`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `kata_shim_process_cpu_seconds_total` | counter | `sandbox`, `process` (`qemu`, `virtiofsd`, `vhost-device-vsock`, `shim`) |
//! | `kata_shim_process_rss_bytes` | gauge | `sandbox`, `process` |
//! | `kata_shim_process_pss_bytes` | gauge | `sandbox`, `process` |
//! | `kata_shim_process_threads` | gauge | `sandbox`, `process` |
//! | `kata_shim_pod_start_phase_seconds` | gauge | `sandbox`, `phase` |
//! | `kata_shim_sandbox_up` | gauge | `sandbox` |

pub mod gather;
pub mod procfs;
pub mod server;

use std::fmt::Write;
use std::path::Path;
use std::sync::{Mutex, PoisonError};

/// Name of the metrics socket in a sandbox's directory.
pub const SOCKET: &str = "shim-monitor.sock";

/// Pod-start phase durations of this process's sandboxes: (sandbox, phase, seconds).
static PHASES: Mutex<Vec<(String, String, f64)>> = Mutex::new(Vec::new());

/// Records one pod-start phase (called by [`crate::sandbox::phase`]).
pub fn record_phase(sandbox: &str, phase: &str, seconds: f64) {
    let mut p = PHASES.lock().unwrap_or_else(PoisonError::into_inner);
    // A re-run phase (e.g. create_container per container) keeps the latest.
    p.retain(|(s, ph, _)| !(s == sandbox && ph == phase));
    p.push((sandbox.to_owned(), phase.to_owned(), seconds));
}

fn phases_of(sandbox: &str) -> Vec<(String, f64)> {
    PHASES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|(s, _, _)| s == sandbox)
        .map(|(_, ph, secs)| (ph.clone(), *secs))
        .collect()
}

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The metrics of `sandbox`, whose VM's run directory is `vm_dir`
/// (blocking: reads procfs).
pub fn render(sandbox: &str, vm_dir: &Path) -> String {
    let sb = escape(sandbox);
    let mut procs = vec![("shim".to_owned(), std::process::id())];
    procs.extend(procfs::vm_processes(vm_dir));
    let stats: Vec<(String, procfs::ProcStats)> = procs
        .into_iter()
        .filter_map(|(name, pid)| procfs::stats(pid).map(|s| (name, s)))
        .collect();
    let mut out = String::new();
    family(
        &mut out,
        "kata_shim_sandbox_up",
        "gauge",
        "1 while the sandbox's shim serves metrics.",
    );
    let _ = writeln!(out, "kata_shim_sandbox_up{{sandbox=\"{sb}\"}} 1");
    type Field = fn(&procfs::ProcStats) -> f64;
    let per_process: [(&str, &str, &str, Field); 4] = [
        (
            "kata_shim_process_cpu_seconds_total",
            "counter",
            "CPU time (user + system) of the sandbox's host processes.",
            |s| s.cpu_seconds,
        ),
        (
            "kata_shim_process_rss_bytes",
            "gauge",
            "Resident memory of the sandbox's host processes.",
            |s| s.rss_bytes as f64,
        ),
        (
            "kata_shim_process_pss_bytes",
            "gauge",
            "Proportional set size of the sandbox's host processes.",
            |s| s.pss_bytes as f64,
        ),
        (
            "kata_shim_process_threads",
            "gauge",
            "Threads of the sandbox's host processes.",
            |s| s.threads as f64,
        ),
    ];
    for (name, kind, help, field) in per_process {
        family(&mut out, name, kind, help);
        for (process, s) in &stats {
            let _ = writeln!(
                out,
                "{name}{{sandbox=\"{sb}\",process=\"{}\"}} {}",
                escape(process),
                field(s)
            );
        }
    }
    family(
        &mut out,
        "kata_shim_pod_start_phase_seconds",
        "gauge",
        "Duration of each pod-start phase of the sandbox.",
    );
    for (phase, secs) in phases_of(sandbox) {
        let _ = writeln!(
            out,
            "kata_shim_pod_start_phase_seconds{{sandbox=\"{sb}\",phase=\"{}\"}} {secs}",
            escape(&phase)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_shim_itself_and_recorded_phases() {
        let d = tempfile::tempdir().expect("tempdir");
        record_phase("sb-render", "vm_launch", 1.5);
        record_phase("sb-render", "vm_launch", 1.25);
        record_phase("other", "vm_launch", 9.75);
        let text = render("sb-render", d.path());
        assert!(
            text.contains("kata_shim_sandbox_up{sandbox=\"sb-render\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "kata_shim_pod_start_phase_seconds{sandbox=\"sb-render\",phase=\"vm_launch\"} 1.25"
            ),
            "{text}"
        );
        assert!(!text.contains("9.75"), "another sandbox's phase: {text}");
        let rss = text
            .lines()
            .find(|l| {
                l.starts_with("kata_shim_process_rss_bytes{sandbox=\"sb-render\",process=\"shim\"}")
            })
            .expect("shim rss");
        let value: f64 = rss
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("number");
        assert!(value > 1e6, "{rss}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
