//! `make demo`: a private containerd runs busybox in a VM through the shim
//! and prints what the container printed.

use std::time::Instant;

use anyhow::{bail, Result};
use integration_tests::{vm_tests_ready, Containerd};

fn main() -> Result<()> {
    vm_tests_ready()?;
    println!("starting a private containerd and importing the busybox image...");
    let ctd = Containerd::start()?;
    let script = "echo \"hello from a container in a VM\"; echo \"guest kernel: $(uname -r)\"; \
                  echo \"host kernel would be: (not visible here)\"; cat /etc/kata-test-marker";
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
        "host kernel: {}",
        String::from_utf8_lossy(&host.stdout).trim()
    );
    println!("ctr run took {:.2} s", took.as_secs_f64());
    Ok(())
}
