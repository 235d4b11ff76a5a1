//! Measurements through a private containerd and `ctr`: pod start, exec
//! latency, stdout throughput, shim memory, scaling. Each takes the runtime
//! (`io.containerd.kata.v2` or `io.containerd.runc.v2`) so both sides run the
//! same commands in the same run.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration_tests::{Containerd, IMAGE, NAMESPACE};

use super::procmem::{self, Mem};

pub const KATA: &str = "io.containerd.kata.v2";
pub const RUNC: &str = "io.containerd.runc.v2";

/// The shim daemon binary of a runtime.
pub fn shim_binary(runtime: &str) -> &'static str {
    if runtime == KATA {
        "containerd-shim-kata-v2"
    } else {
        "containerd-shim-runc-v2"
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ctr_args(ctd: &Containerd) -> Vec<String> {
    vec![
        "--address".into(),
        ctd.socket.to_string_lossy().into_owned(),
        "--namespace".into(),
        NAMESPACE.into(),
    ]
}

/// `ctr run -d` of `sleep 3600`, checked.
pub fn run_sleeper(ctd: &Containerd, runtime: &str, id: &str, extra: &[&str]) -> Result<()> {
    let mut args = vec!["run", "-d", "--runtime", runtime];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[IMAGE, id, "sleep", "3600"]);
    let out = ctd.ctr(&args)?;
    if !out.status.success() {
        bail!(
            "ctr run -d {id} ({runtime}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Wall time (ms) of `ctr run --rm --runtime R IMAGE id true`.
pub fn pod_start(ctd: &Containerd, runtime: &str, id: &str) -> Result<f64> {
    let t = Instant::now();
    let out = ctd.ctr(&["run", "--rm", "--runtime", runtime, IMAGE, id, "true"])?;
    let elapsed = t.elapsed();
    if !out.status.success() {
        ctd.remove(id);
        bail!(
            "ctr run --rm {id} ({runtime}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(ms(elapsed))
}

/// The shim's per-phase pod start timings for sandbox `id`, from the
/// `phase done` lines it logs (containerd copies them into its log).
pub fn phases(log: &str, id: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let needle = format!("sandbox=\"{id}\"");
    let bare = format!("sandbox={id} ");
    for line in log.lines().filter(|l| l.contains("phase done")) {
        if !(line.contains(&needle) || line.contains(&bare)) {
            continue;
        }
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(|v| v.trim_matches('"').trim_end_matches('\\').trim_matches('"'))
        };
        if let (Some(p), Some(v)) = (field("phase="), field("ms=")) {
            if let Ok(v) = v.parse::<f64>() {
                *out.entry(p.to_owned()).or_insert(0.0) += v;
            }
        }
    }
    out
}

/// Round trips (ms) of `ctr task exec … true` in container `id`.
pub fn exec_latency(ctd: &Containerd, id: &str, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let exec_id = format!("bench-exec-{i}");
        let t = Instant::now();
        let o = ctd.ctr(&["task", "exec", "--exec-id", &exec_id, id, "true"])?;
        let elapsed = t.elapsed();
        if !o.status.success() {
            bail!("ctr task exec {id}: {}", String::from_utf8_lossy(&o.stderr));
        }
        out.push(ms(elapsed));
    }
    Ok(out)
}

/// One stdout throughput run: `ctr run --rm … dd if=/dev/zero bs=1M count=MiB`,
/// ctr's stdout read here and written to a file. Returns (ms from the first
/// byte to EOF, bytes that arrived): pod start and teardown are not in it.
pub fn stdout_run(ctd: &Containerd, runtime: &str, id: &str, mib: u64) -> Result<(f64, u64)> {
    let path = ctd.dir.join(format!("{id}.out"));
    let mut file = std::fs::File::create(&path)?;
    let count = format!("count={mib}");
    let mut child = Command::new("ctr")
        .args(ctr_args(ctd))
        .args(["run", "--rm", "--runtime", runtime, IMAGE, id])
        .args(["dd", "if=/dev/zero", "bs=1M", &count])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("ctr run")?;
    let mut out = child.stdout.take().context("ctr stdout")?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut first, mut bytes) = (None, 0u64);
    loop {
        let n = std::io::Read::read(&mut out, &mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        bytes += n as u64;
        std::io::Write::write_all(&mut file, &buf[..n])?;
    }
    let transfer = first.map(|t| t.elapsed()).unwrap_or_default();
    let st = child.wait()?;
    drop(file);
    let _ = std::fs::remove_file(&path);
    if !st.success() {
        ctd.remove(id);
        bail!("ctr run {id} dd ({runtime}) failed: {st}");
    }
    Ok((ms(transfer), bytes))
}

/// A pod (one sandbox container, `containers - 1` more in it) of `sleep`s.
pub fn start_pod(ctd: &Containerd, runtime: &str, pod: &str, containers: usize) -> Result<()> {
    let sandbox_ann = format!("io.kubernetes.cri.sandbox-id={pod}");
    run_sleeper(
        ctd,
        runtime,
        pod,
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            &sandbox_ann,
        ],
    )?;
    for i in 1..containers {
        run_sleeper(
            ctd,
            runtime,
            &format!("{pod}-c{i}"),
            &[
                "--annotation",
                "io.kubernetes.cri.container-type=container",
                "--annotation",
                &sandbox_ann,
            ],
        )?;
    }
    Ok(())
}

/// Removes a pod's containers (the sandbox last).
pub fn remove_pod(ctd: &Containerd, pod: &str, containers: usize) {
    for i in (1..containers).rev() {
        ctd.remove(&format!("{pod}-c{i}"));
    }
    ctd.remove(pod);
}

/// Removes every container in the bench namespace (after a failure, and at
/// the end: the harness's containerd does not stop VMs it leaves behind).
pub fn remove_all(ctd: &Containerd) {
    let ids: Vec<String> = ctd
        .ctr(&["containers", "ls", "-q"])
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    // Sandboxes (no `-c<n>` suffix) last.
    let (containers, sandboxes): (Vec<_>, Vec<_>) = ids.iter().partition(|id| id.contains("-c"));
    for group in [containers, sandboxes] {
        std::thread::scope(|s| {
            for id in group {
                s.spawn(move || ctd.remove(id));
            }
        });
    }
}

/// Shim daemon of `pod`: pid, memory, thread count.
pub fn shim_of(runtime: &str, pod: &str) -> Result<(u32, Mem, u64)> {
    let daemons = procmem::shim_daemons(shim_binary(runtime), NAMESPACE);
    let pid = *daemons
        .get(pod)
        .with_context(|| format!("no {} daemon for {pod}: {daemons:?}", shim_binary(runtime)))?;
    Ok((pid, procmem::rollup(pid), procmem::threads(pid)))
}

/// Scaling: `n` pods started at once (one `ctr run -d` each, in parallel);
/// returns (ms until all run, peak PSS KiB of every shim tree meanwhile).
pub fn start_many(ctd: &Containerd, runtime: &str, prefix: &str, n: usize) -> Result<(f64, u64)> {
    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (done, peak) = (done.clone(), peak.clone());
        let binary = shim_binary(runtime);
        std::thread::spawn(move || {
            // Sample a little after the last pod is up too (memory still grows).
            let mut after = 0;
            while after < 4 {
                if done.load(Ordering::SeqCst) {
                    after += 1;
                }
                let roots = procmem::shim_daemons(binary, NAMESPACE).into_values();
                peak.fetch_max(procmem::trees_total(roots).pss_kib, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let t = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let id = format!("{prefix}-{i}");
                s.spawn(move || run_sleeper(ctd, runtime, &id, &[]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("thread panicked")))
            .collect()
    });
    let elapsed = t.elapsed();
    done.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    std::thread::scope(|s| {
        for i in 0..n {
            let id = format!("{prefix}-{i}");
            s.spawn(move || ctd.remove(&id));
        }
    });
    for r in results {
        r?;
    }
    Ok((ms(elapsed), peak.load(Ordering::SeqCst)))
}

#[cfg(test)]
mod tests {
    use super::phases;

    #[test]
    fn phase_lines() {
        let log = "2026-11-25T22:40:00Z  INFO sandbox_boot{sandbox=p1}: containerd_shim_kata_v2::sandbox: phase done sandbox=\"p1\" phase=\"vm_launch\" ms=812.5\n\
                   x INFO phase done sandbox=\"p2\" phase=\"vm_launch\" ms=1.0\n\
                   x INFO phase done sandbox=\"p1\" phase=\"agent_connect\" ms=1500.25\n";
        let p = phases(log, "p1");
        assert_eq!(p.get("vm_launch"), Some(&812.5));
        assert_eq!(p.get("agent_connect"), Some(&1500.25));
        assert_eq!(p.len(), 2);
    }
}
