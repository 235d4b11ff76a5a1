//! Diagnosis for stdout throughput (ignored: run by hand): what moving bytes
//! through pipes costs inside the guest, without the agent or the host.
//! `cargo test --release -p integration-tests --test stdout_costs -- --ignored --nocapture`

use anyhow::Result;
use integration_tests::{vm_tests_ready, Containerd};

#[test]
#[ignore]
fn guest_pipe_costs() -> Result<()> {
    vm_tests_ready()?;
    let ctd = Containerd::start()?;
    ctd.run_detached("costs", &[], &["sleep", "3600"])?;
    let scripts = [
        "dd if=/dev/zero bs=1M count=128 of=/dev/null",
        "dd if=/dev/zero bs=1M count=128 | cat > /dev/null",
        "dd if=/dev/zero bs=1M count=128 | cat | cat > /dev/null",
    ];
    for (i, script) in scripts.iter().enumerate() {
        // Guest uptime around the pipeline: the guest's own clock, no exec latency.
        let timed = format!(
            "a=$(cut -d' ' -f1 /proc/uptime); {script} 2>/dev/null; \
             b=$(cut -d' ' -f1 /proc/uptime); echo $a $b"
        );
        let id = format!("c{i}");
        let out = ctd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            &id,
            "costs",
            "sh",
            "-c",
            &timed,
        ])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let t: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match t[..] {
            [a, b] => println!("{script}: {:.0} MiB/s", 128.0 / (b - a).max(0.01)),
            _ => println!("{script}: no timing in {text:?}"),
        }
    }
    ctd.remove("costs");
    Ok(())
}
