//! `make bench`: the project measured side by side with its references (runc
//! and the VM floor) in one run on this machine, reported as ratios
//! (Markdown, JSON, an SVG plot of the scaling figure).
//!
//! Runs are interleaved (ours, runc, floor, ours, …) so background load on a
//! shared machine hits every side alike.

pub mod floor;
pub mod pods;
pub mod procmem;
pub mod report;
pub mod rpc;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use integration_tests::{guest_dir, write_config, Containerd};

use floor::Floor;
use pods::{KATA, RUNC};
use procmem::{Mem, QemuBreakdown};
use stats::Summary;

/// A single section to run instead of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    Stdout,
    Memory,
}

impl Only {
    /// The sections this choice runs.
    fn runs(self, section: &str) -> bool {
        match self {
            Only::Stdout => section == "stdout throughput",
            Only::Memory => {
                section == "memory and exec" || section == "shim memory with many containers"
            }
        }
    }
}

/// What to run and how often.
#[derive(Debug, Clone)]
pub struct Opts {
    pub out: PathBuf,
    /// Run only this section (no pod start, so no start ratios in the report).
    pub only: Option<Only>,
    /// Samples of pod start (each side) and of the floor.
    pub runs: usize,
    /// Samples of exec latency.
    pub exec_runs: usize,
    /// Stdout throughput: MiB per run (0 = skip) and runs.
    pub throughput_mib: u64,
    pub throughput_runs: usize,
    /// Pod counts started at once, and rounds per count (empty = skip).
    pub scaling: Vec<usize>,
    pub scaling_rounds: usize,
    /// Shim memory with this many containers in the pod besides one (0 = skip).
    pub many_containers: usize,
    /// Pod lifecycles on fakes for the shim RPC overhead (0 = skip).
    pub rpc_lifecycles: usize,
}

impl Opts {
    /// The full run (`make bench`).
    pub fn full(out: PathBuf) -> Self {
        Self {
            out,
            only: None,
            runs: 5,
            exec_runs: 10,
            throughput_mib: 256,
            throughput_runs: 5,
            scaling: vec![1, 2, 4, 8],
            scaling_rounds: 3,
            many_containers: 10,
            rpc_lifecycles: 50,
        }
    }

    /// One section (`kata-bench --only …`); stdout gets 3 runs.
    pub fn only(only: Only, out: PathBuf) -> Self {
        Self {
            only: Some(only),
            throughput_runs: 3,
            ..Self::full(out)
        }
    }

    /// One iteration of the cheap parts (the smoke test in `make test`).
    pub fn smoke(out: PathBuf) -> Self {
        Self {
            out,
            only: None,
            runs: 1,
            exec_runs: 1,
            throughput_mib: 0,
            throughput_runs: 0,
            scaling: vec![],
            scaling_rounds: 0,
            many_containers: 0,
            rpc_lifecycles: 5,
        }
    }
}

/// Shim daemon memory for one configuration.
#[derive(Debug, Clone, Default)]
pub struct ShimMem {
    pub containers: usize,
    pub kata: Mem,
    pub kata_threads: u64,
    pub runc: Mem,
    pub runc_threads: u64,
}

/// One scaling point.
#[derive(Debug, Clone, Default)]
pub struct ScalePoint {
    pub pods: usize,
    /// ms until all pods run.
    pub time_ms: Summary,
    /// Peak PSS of all shim trees (MiB).
    pub peak_pss_mib: Summary,
}

/// Everything measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub host: String,
    pub accel: String,
    pub started: String,
    pub duration_s: f64,
    pub start_kata: Summary,
    pub start_runc: Summary,
    pub start_floor: Summary,
    pub phases: BTreeMap<String, Summary>,
    pub exec_kata: Summary,
    pub exec_runc: Summary,
    pub shim_mem: Vec<ShimMem>,
    /// Per-pod host memory by process (shim tree), and QEMU's breakdown.
    pub pod_mem: BTreeMap<String, Mem>,
    pub qemu: QemuBreakdown,
    pub tput_kata: Summary,
    pub tput_runc: Summary,
    pub tput_floor: Summary,
    pub tput_mib: u64,
    pub scaling: Vec<ScalePoint>,
    /// Shim RPC latency on fakes (µs by RPC), CPU ms per pod lifecycle.
    pub rpc_us: BTreeMap<String, Summary>,
    pub rpc_cpu_ms_per_pod: f64,
    pub rpc_lifecycles: usize,
    pub notes: Vec<String>,
    /// Sections that failed (their error is in `notes`).
    pub failed: Vec<String>,
}

fn log(msg: &str) {
    eprintln!("kata-bench: {msg}");
}

/// Runs every measurement `opts` asks for and writes the report. A section
/// that fails is noted in the report (and in [`Results::failed`]) and the
/// others still run; the report is written either way. Only a failed pod
/// start (or floor) fails the run.
pub fn run(opts: &Opts) -> Result<Results> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&opts.out)?;
    let mut r = Results {
        host: host_line(),
        started: chrono_now(),
        ..Default::default()
    };
    let ctd = Containerd::start().context("starting the private containerd")?;
    // Benchmarks run the shim as deployed: without debug logging.
    write_config(&ctd.config, |t| {
        t.replace("enable_debug = true", "enable_debug = false")
    })?;
    let mut first_err = None;
    let mut fl = match Floor::prepare(&ctd.dir, &guest_dir()).context("preparing the VM floor") {
        Ok(fl) => {
            r.accel = format!("{:?} ({})", fl.accel, fl.accel_reason);
            log(&format!("accelerator: {}", r.accel));
            Some(fl)
        }
        Err(e) => {
            r.notes.push(format!("VM floor unavailable: {e:#}"));
            first_err = Some(e);
            None
        }
    };
    let sections: [(&str, Section); 6] = [
        ("pod start", pod_start),
        ("memory and exec", memory_and_exec),
        ("shim memory with many containers", many_containers),
        ("stdout throughput", throughput),
        ("scaling", scaling),
        ("shim RPC overhead on fakes", rpc_overhead),
    ];
    for (name, section) in sections {
        if opts.only.is_some_and(|o| !o.runs(name)) {
            continue;
        }
        if let Err(e) = section(&ctd, fl.as_mut(), opts, &mut r) {
            log(&format!("{name} failed: {e:#}"));
            r.notes
                .push(first_lines(&format!("{name} failed: {e:#}"), 2));
            pods::remove_all(&ctd);
            r.failed.push(name.to_owned());
            // Without pod start there is no ratio to report: fail the run.
            if name == "pod start" {
                first_err.get_or_insert(e.context(format!("{name} failed")));
            }
        }
    }
    pods::remove_all(&ctd);
    r.duration_s = t0.elapsed().as_secs_f64();
    report::write(&r, &opts.out)?;
    match first_err {
        Some(e) => Err(e),
        None => Ok(r),
    }
}

type Section = fn(&Containerd, Option<&mut Floor>, &Opts, &mut Results) -> Result<()>;

/// 1. Pod start, interleaved (ours, runc, floor), after one warm-up each.
fn pod_start(
    ctd: &Containerd,
    mut fl: Option<&mut Floor>,
    opts: &Opts,
    r: &mut Results,
) -> Result<()> {
    pods::pod_start(ctd, RUNC, "warm-runc")?;
    pods::pod_start(ctd, KATA, "warm-kata")?;
    let (mut k, mut c, mut f) = (vec![], vec![], vec![]);
    let mut phases: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // A failed start is counted and reported, and retried (up to as many
    // failures as runs): one flake must not cost the whole report.
    let mut failures: Vec<String> = vec![];
    let mut attempt = 0;
    for i in 0..opts.runs {
        let ms = loop {
            let id = format!("start-kata-{attempt}");
            attempt += 1;
            match pods::pod_start(ctd, KATA, &id) {
                Ok(ms) => {
                    for (p, v) in pods::phases(&ctd.log(), &id) {
                        phases.entry(p).or_default().push(v);
                    }
                    break ms;
                }
                Err(e) if failures.len() < opts.runs => {
                    log(&format!(
                        "pod start {id} failed, retrying: {}",
                        first_lines(&format!("{e:#}"), 1)
                    ));
                    failures.push(first_lines(&format!("{e:#}"), 1));
                }
                Err(e) => return Err(e),
            }
        };
        k.push(ms);
        c.push(pods::pod_start(ctd, RUNC, &format!("start-runc-{i}"))?);
        if let Some(fl) = fl.as_deref_mut() {
            f.push(fl.boot(0)?.first_byte.as_secs_f64() * 1000.0);
        }
        log(&format!(
            "pod start {}/{}: kata {:.0} ms, runc {:.0} ms, floor {:.0} ms",
            i + 1,
            opts.runs,
            k[i],
            c[i],
            f.last().copied().unwrap_or(f64::NAN)
        ));
    }
    if !failures.is_empty() {
        r.notes.push(format!(
            "kata pod start failed {} of {attempt} attempts (retried): {}",
            failures.len(),
            failures.join("; ")
        ));
    }
    r.start_kata = Summary::new(k);
    r.start_runc = Summary::new(c);
    r.start_floor = Summary::new(f);
    r.phases = phases
        .into_iter()
        .map(|(p, v)| (p, Summary::new(v)))
        .collect();
    if r.phases.is_empty() {
        r.notes.push(
            "no `phase done` lines from the shim in containerd's log: phase breakdown missing"
                .into(),
        );
    }
    Ok(())
}

/// 2–4. One-container pods: shim memory, per-pod memory, exec latency.
fn memory_and_exec(
    ctd: &Containerd,
    _: Option<&mut Floor>,
    opts: &Opts,
    r: &mut Results,
) -> Result<()> {
    pods::start_pod(ctd, KATA, "mem-kata", 1)?;
    pods::start_pod(ctd, RUNC, "mem-runc", 1)?;
    // Steady state of a running pod: the guest reports the pages it freed
    // after boot (free page reporting waits 2 s) and QEMU drops them.
    std::thread::sleep(std::time::Duration::from_secs(6));
    let (kpid, kmem, kthr) = pods::shim_of(KATA, "mem-kata")?;
    let (_, cmem, cthr) = pods::shim_of(RUNC, "mem-runc")?;
    r.shim_mem.push(ShimMem {
        containers: 1,
        kata: kmem,
        kata_threads: kthr,
        runc: cmem,
        runc_threads: cthr,
    });
    r.pod_mem = procmem::by_process(kpid);
    if let Some(qpid) = procmem::tree(kpid)
        .into_iter()
        .find(|p| procmem::comm(*p).starts_with("qemu"))
    {
        r.qemu = procmem::qemu_breakdown(qpid);
    }
    let (mut ek, mut ec) = (vec![], vec![]);
    for _ in 0..opts.exec_runs {
        ek.extend(pods::exec_latency(ctd, "mem-kata", 1)?);
        ec.extend(pods::exec_latency(ctd, "mem-runc", 1)?);
    }
    r.exec_kata = Summary::new(ek);
    r.exec_runc = Summary::new(ec);
    log(&format!(
        "exec: kata {}, runc {} ms",
        r.exec_kata.show(1),
        r.exec_runc.show(1)
    ));
    pods::remove_pod(ctd, "mem-kata", 1);
    pods::remove_pod(ctd, "mem-runc", 1);
    Ok(())
}

/// 2. Shim memory with `many_containers` containers in one pod.
fn many_containers(
    ctd: &Containerd,
    _: Option<&mut Floor>,
    opts: &Opts,
    r: &mut Results,
) -> Result<()> {
    let n = opts.many_containers;
    if n < 2 {
        return Ok(());
    }
    pods::start_pod(ctd, KATA, "many-kata", n)?;
    pods::start_pod(ctd, RUNC, "many-runc", n)?;
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (_, kmem, kthr) = pods::shim_of(KATA, "many-kata")?;
    let (_, cmem, cthr) = pods::shim_of(RUNC, "many-runc")?;
    r.shim_mem.push(ShimMem {
        containers: n,
        kata: kmem,
        kata_threads: kthr,
        runc: cmem,
        runc_threads: cthr,
    });
    pods::remove_pod(ctd, "many-kata", n);
    pods::remove_pod(ctd, "many-runc", n);
    log("shim memory measured");
    Ok(())
}

/// 5. Stdout throughput (MiB/s), first byte to EOF as ctr delivers it.
fn throughput(
    ctd: &Containerd,
    mut fl: Option<&mut Floor>,
    opts: &Opts,
    r: &mut Results,
) -> Result<()> {
    let mib = opts.throughput_mib;
    if mib == 0 || opts.throughput_runs == 0 {
        return Ok(());
    }
    r.tput_mib = mib;
    let (mut tk, mut tc, mut tf) = (vec![], vec![], vec![]);
    for i in 0..opts.throughput_runs {
        let (ms, bytes) = pods::stdout_run(ctd, KATA, &format!("tput-kata-{i}"), mib)?;
        check_bytes(bytes, mib, KATA, r);
        tk.push(bytes as f64 / (1 << 20) as f64 / (ms.max(1.0) / 1000.0));
        let (ms, bytes) = pods::stdout_run(ctd, RUNC, &format!("tput-runc-{i}"), mib)?;
        check_bytes(bytes, mib, RUNC, r);
        tc.push(bytes as f64 / (1 << 20) as f64 / (ms.max(1.0) / 1000.0));
        if let Some(fl) = fl.as_deref_mut() {
            if let Some((bytes, d)) = fl.boot(mib << 20)?.stream {
                check_bytes(bytes, mib, "floor", r);
                tf.push(bytes as f64 / (1 << 20) as f64 / d.as_secs_f64().max(0.001));
            }
        }
        log(&format!(
            "stdout {}/{}: kata {:.0}, runc {:.0}, floor {:.0} MiB/s",
            i + 1,
            opts.throughput_runs,
            tk[i],
            tc[i],
            tf.last().copied().unwrap_or(f64::NAN)
        ));
        r.tput_kata = Summary::new(tk.clone());
        r.tput_runc = Summary::new(tc.clone());
        r.tput_floor = Summary::new(tf.clone());
    }
    Ok(())
}

/// 6. N pods started at once. A failed round is noted; the next N still runs.
fn scaling(ctd: &Containerd, _: Option<&mut Floor>, opts: &Opts, r: &mut Results) -> Result<()> {
    for &n in &opts.scaling {
        let (mut times, mut peaks) = (vec![], vec![]);
        for round in 0..opts.scaling_rounds {
            match pods::start_many(ctd, KATA, &format!("scale{n}-{round}"), n) {
                Ok((ms, peak)) => {
                    times.push(ms);
                    peaks.push(peak as f64 / 1024.0);
                    log(&format!(
                        "scaling N={n} round {}: {ms:.0} ms, peak {:.0} MiB",
                        round + 1,
                        peak as f64 / 1024.0
                    ));
                }
                Err(e) => {
                    let msg = format!("scaling N={n} round {}: {e:#}", round + 1);
                    log(&msg);
                    r.notes.push(first_lines(&msg, 3));
                    r.failed
                        .push(format!("scaling (N={n} round {})", round + 1));
                    pods::remove_all(ctd);
                }
            }
        }
        r.scaling.push(ScalePoint {
            pods: n,
            time_ms: Summary::new(times),
            peak_pss_mib: Summary::new(peaks),
        });
    }
    Ok(())
}

/// 7. Shim RPC overhead on fakes.
fn rpc_overhead(
    ctd: &Containerd,
    _: Option<&mut Floor>,
    opts: &Opts,
    r: &mut Results,
) -> Result<()> {
    if opts.rpc_lifecycles == 0 {
        return Ok(());
    }
    let rpc = rpc::measure(&ctd.dir.join("rpc"), opts.rpc_lifecycles)?;
    r.rpc_us = rpc
        .calls_us
        .into_iter()
        .map(|(k, v)| (k, Summary::new(v)))
        .collect();
    r.rpc_cpu_ms_per_pod = rpc.cpu_ms_per_pod;
    r.rpc_lifecycles = rpc.lifecycles;
    log(&format!(
        "shim on fakes: {:.2} ms CPU per pod lifecycle",
        r.rpc_cpu_ms_per_pod
    ));
    Ok(())
}

fn first_lines(s: &str, n: usize) -> String {
    s.lines().take(n).collect::<Vec<_>>().join(" / ")
}

/// A short stdout is noted, not fatal; the throughput counts what arrived.
/// ctr 1.6 closes its stdout fifo when it hears of the exit, losing what the
/// fifo still holds: runc's shim has lost ~128 KiB that way here; ours waits
/// for the reader to empty the fifo first (`shim/src/io.rs`, `Sink::drained`).
fn check_bytes(bytes: u64, mib: u64, what: &str, r: &mut Results) {
    if bytes != mib << 20 {
        r.notes.push(format!(
            "stdout {what}: {bytes} bytes arrived of {}",
            mib << 20
        ));
    }
}

fn host_line() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpus} CPUs, {} GiB, Linux {}",
        mem / (1024 * 1024),
        kernel.trim()
    )
}

fn chrono_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
