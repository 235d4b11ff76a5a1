//! `kata-bench` (`make bench`): pod start, shim and per-pod memory, exec
//! latency, stdout throughput and scaling of this runtime against runc and
//! the VM floor; writes `report.md`, `report.json`, `scaling.svg` and prints
//! the ratio table.
//!
//! Usage: `kata-bench [--out DIR] [--smoke] [--runs N] [--floor N] [--only stdout|memory]`
//!
//! `--only stdout` runs only the stdout throughput section (ours, runc and the
//! floor, interleaved; `--runs N` sets its runs): a quick loop for tuning.
//! `--only memory` runs only the one-container pods (shim and per-pod memory,
//! exec latency) and the ten-container shim.

#[path = "../bench/mod.rs"]
mod bench;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let mut out = None;
    let mut smoke = false;
    let mut runs = None;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = Some(PathBuf::from(args.next().context("--out DIR")?)),
            "--smoke" => smoke = true,
            "--runs" => runs = Some(args.next().context("--runs N")?.parse::<usize>()?),
            "--only" => match args.next().as_deref() {
                Some("stdout") => only = Some(bench::Only::Stdout),
                Some("memory") => only = Some(bench::Only::Memory),
                other => bail!("--only takes `stdout` or `memory`, not {other:?}"),
            },
            "--floor" => {
                // Only the VM floor, N boots (diagnosis).
                let n = args.next().context("--floor N")?.parse::<usize>()?;
                let work =
                    std::env::temp_dir().join(format!("kata-bench-floor-{}", std::process::id()));
                std::fs::create_dir_all(&work)?;
                let mut fl = bench::floor::Floor::prepare(&work, &integration_tests::guest_dir())?;
                for _ in 0..n {
                    let s = fl.boot(0)?;
                    println!("floor: {:.0} ms", s.first_byte.as_secs_f64() * 1000.0);
                }
                if std::env::var_os("KATA_BENCH_KEEP").is_none() {
                    let _ = std::fs::remove_dir_all(&work);
                }
                return Ok(());
            }
            "-h" | "--help" => {
                println!(
                    "kata-bench [--out DIR] [--smoke] [--runs N] [--floor N] [--only stdout|memory]"
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (see --help)"),
        }
    }
    integration_tests::vm_tests_ready()?;
    let out = out.unwrap_or_else(|| {
        let build = std::env::var_os("BUILD")
            .map(PathBuf::from)
            .unwrap_or_else(|| integration_tests::repo_root().join("build"));
        // A partial run must not overwrite the full report.
        build.join(if only.is_some() {
            "bench-only"
        } else {
            "bench"
        })
    });
    let mut opts = match (only, smoke) {
        (Some(o), _) => bench::Opts::only(o, out),
        (None, true) => bench::Opts::smoke(out),
        (None, false) => bench::Opts::full(out),
    };
    if let Some(n) = runs {
        opts.runs = n;
        opts.throughput_runs = n;
    }
    let results = bench::run(&opts)?;
    println!("{}", bench::report::ratio_table(&results));
    println!(
        "report: {} (took {:.0} s)",
        opts.out.join("report.md").display(),
        results.duration_s
    );
    if !results.failed.is_empty() {
        eprintln!(
            "kata-bench: WARNING: these sections failed (see the report's notes): {}",
            results.failed.join(", ")
        );
    }
    Ok(())
}
