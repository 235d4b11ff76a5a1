//! `make demo`: a private containerd runs busybox in a VM through the shim
//! and prints what the container printed. `kata-demo --repeat N` also times
//! N more `ctr run --rm … echo` runs and prints their median; `--log` then
//! prints containerd's log (the shim's and the guest agent's debug lines).

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use integration_tests::{vm_tests_ready, Containerd};

fn main() -> Result<()> {
    vm_tests_ready()?;
    let args: Vec<String> = std::env::args().collect();
    let repeat = match args.iter().position(|a| a == "--repeat") {
        Some(i) => args
            .get(i + 1)
            .context("--repeat needs a number")?
            .parse::<usize>()
            .context("--repeat needs a number")?,
        None => 0,
    };
    println!("starting a private containerd and importing the busybox image...");
    let ctd = Containerd::start()?;
    let script = "echo \"hello from a container in a VM\"; echo \"kernel inside: $(uname -r)\"; \
                  cat /etc/kata-test-marker";
    println!("$ ctr run --rm --runtime io.containerd.kata.v2 kata-busybox demo sh -c '...'");
    let t = Instant::now();
    let out = ctd.run("demo", &[], &["sh", "-c", script])?;
    let took = t.elapsed();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!(
            "container failed ({}); containerd log:\n{}",
            out.status,
            ctd.log()
        );
    }
    let host = std::process::Command::new("uname").arg("-r").output()?;
    println!(
        "kernel of the host: {}",
        String::from_utf8_lossy(&host.stdout).trim()
    );
    println!("ctr run took {:.2} s", took.as_secs_f64());
    if repeat > 0 {
        let mut times: Vec<Duration> = Vec::new();
        for i in 0..repeat {
            let t = Instant::now();
            let out = ctd.run(&format!("timed{i}"), &[], &["echo", "hi"])?;
            if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != "hi" {
                bail!("run {i} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            times.push(t.elapsed());
        }
        times.sort();
        let ms: Vec<String> = times
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect();
        println!(
            "ctr run --rm … echo hi, {repeat} runs: median {:.0} ms (all: {} ms)",
            times[times.len() / 2].as_secs_f64() * 1000.0,
            ms.join(", ")
        );
    }
    if args.iter().any(|a| a == "--meminfo") {
        // The guest kernel's footprint: what a 256 MiB VM leaves for work.
        let out = ctd.run("meminfo", &[], &["sh", "-c", "head -3 /proc/meminfo"])?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    if args.iter().any(|a| a == "--log") {
        print!("{}", ctd.log());
    }
    Ok(())
}
