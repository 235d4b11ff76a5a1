//! Exec latency in the guest, as `ctr task exec` sees it from the agent:
//! ExecProcess → output drained → WaitProcess of `true`, one at a time. A
//! measurement, not a check: ignored by default, boots its own VM with the
//! agent's debug log, prints the median and the agent's phase timings.
//!
//! `KATA_GUEST_IMAGE_DIR=build/guest cargo test -p kata-agent --test latency -- --ignored --nocapture`
mod common;
// Shared with tests/vm.rs; only their helpers are used here.
#[allow(dead_code)]
mod pod;
#[allow(dead_code)]
mod resources;

use std::time::{Duration, Instant};

use agent_client::Address;
use anyhow::{ensure, Context, Result};
use common::*;

const EXECS: usize = 30;

async fn measure(vm: &Vm) -> Result<()> {
    let addr = Address::Hybrid {
        uds_path: vm.dir.path().join("vsock.sock"),
        port: 1024,
    };
    let agent = agent_client::connect(&addr, Duration::from_secs(60), &|| vm.console()).await?;
    let agent = agent.as_ref();
    agent
        .create_sandbox(agent_client::testing::shared_fs_sandbox("lat"))
        .await?;
    make_rootfs(&vm.shared(), "lat")?;
    pod::run(agent, "lat", container_spec("lat", &["sleep", "300"])).await?;
    let mut times = Vec::new();
    for i in 0..EXECS + 5 {
        let id = format!("x{i}");
        let t = Instant::now();
        agent
            .exec_process(pod::exec_req("lat", &id, &["true"]))
            .await?;
        agent.close_stdin("lat", &id).await?;
        let (_, _, status) = tokio::try_join!(
            pod::read_all(agent, "lat", &id, false),
            pod::read_all(agent, "lat", &id, true),
            async { Ok(agent.wait_process("lat", &id).await?) }
        )?;
        ensure!(status == 0, "exec {id}: {status}");
        if i >= 5 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    eprintln!(
        "exec of `true`, {EXECS} in a row after 5 warm-ups: median {:.1?}, min {:.1?}, max {:.1?}",
        times[EXECS / 2],
        times[0],
        times[EXECS - 1]
    );
    let console = vm.console();
    // Median of each phase the agent logs (debug), over the measured execs.
    for phase in [
        "helper spawned",
        "joined the cgroup",
        "container process ready",
        "program exec'd",
    ] {
        let mut ms: Vec<f64> = console
            .lines()
            .filter(|l| l.contains(phase) && !l.contains("lat/x0 ") && l.contains("elapsed="))
            .filter_map(|l| l.split("elapsed=").nth(1))
            .filter_map(|v| {
                let v = v.split_whitespace().next()?;
                match v.strip_suffix("ms") {
                    Some(ms) => ms.parse().ok(),
                    None => v
                        .strip_suffix("µs")?
                        .parse::<f64>()
                        .ok()
                        .map(|us| us / 1000.0),
                }
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        let m = ms
            .get(ms.len() / 2)
            .context("no debug lines: agent.log not honoured")?;
        eprintln!("phase {phase:?}: median {m:.1} ms over {} execs", ms.len());
    }
    // The agent's log of one exec, from its ExecProcess to the next one's.
    let one: Vec<&str> = console
        .lines()
        .skip_while(|l| !l.contains("exec=x20"))
        .take_while(|l| !l.contains("exec=x21"))
        .collect();
    eprintln!("{}", one.join("\n"));
    // What the program itself costs here: 20 fork+exec of busybox `true`
    // from a shell in the container, no agent involved.
    let (_, out, err) = pod::exec(
        agent,
        "lat",
        "loop",
        "cp /bin/busybox /dev/shm/true; \
         time sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do /bin/true; done'; \
         time sh -c 'for i in 1 2 3 4 5 6 7 8 9 10; do /dev/shm/true; done'",
    )
    .await?;
    eprintln!("in the container: {out}{err}");
    agent.remove_container("lat", 10).await?;
    agent.destroy_sandbox().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: run with --ignored"]
async fn exec_latency_in_vm() -> Result<()> {
    let Some(image) = agent_client::testing::guest_image_dir() else {
        return Ok(());
    };
    // The agent's phase timings are debug events: `agent.log` (upstream's
    // kernel parameter) takes a level or a filter.
    std::env::set_var("KATA_TEST_KERNEL_ARGS", "agent.log=kata_agent=debug");
    let mut vm = Vm::boot(&image)?;
    measure(&vm).await?;
    let mut qemu = vm.qemu.take().context("qemu")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while qemu.try_wait()?.is_none() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    Ok(())
}
