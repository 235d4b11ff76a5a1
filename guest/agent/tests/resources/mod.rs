//! The resource half of the VM scenario (same VM as the lifecycle half):
//! guest details and clock, the vsock log port, pause freezing CPU usage,
//! OOM events, memory limit updates, 1000 execs without fd or RSS growth,
//! the agent's RSS with 10 containers.
use std::io::Read;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use protocols::agent::*;
use protocols::agent_ttrpc::AgentServiceClient;
use protocols::oci;

use crate::common::*;

/// Execs in the leak check, and how many run at once.
const EXECS: usize = 1000;
const EXECS_IN_FLIGHT: usize = 8;

fn start_req(cid: &str) -> StartContainerRequest {
    StartContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    }
}

async fn remove(agent: &AgentServiceClient, cid: &str) -> Result<()> {
    let rm = RemoveContainerRequest {
        container_id: cid.into(),
        timeout: 10,
        ..Default::default()
    };
    agent.remove_container(ctx(), &rm).await?;
    Ok(())
}

/// A container running `args` in the VM's pid namespace (it sees the agent as PID 1).
async fn run_container(
    agent: &AgentServiceClient,
    vm: &Vm,
    cid: &str,
    args: &[&str],
    memory_limit: i64,
) -> Result<()> {
    make_rootfs(&vm.shared(), cid)?;
    let mut spec = container_spec(cid, args);
    if let Some(l) = spec.Linux.as_mut() {
        l.Namespaces.retain(|n| n.Type != "pid");
        if let Some(m) = l.Resources.as_mut().and_then(|r| r.Memory.as_mut()) {
            m.Limit = memory_limit;
        }
    }
    agent
        .create_container(ctx(), &create_req(cid, spec))
        .await?;
    agent.start_container(ctx(), &start_req(cid)).await?;
    Ok(())
}

/// Runs `sh -c script` in `cid`; returns (exit status, stdout).
pub async fn exec_sh(
    agent: &AgentServiceClient,
    cid: &str,
    exec_id: &str,
    script: &str,
) -> Result<(i32, String)> {
    exec_args(agent, cid, exec_id, &["sh", "-c", script]).await
}

/// Runs `args` in `cid` (stdin closed, both streams drained); returns (exit status, stdout).
pub async fn exec_args(
    agent: &AgentServiceClient,
    cid: &str,
    exec_id: &str,
    args: &[&str],
) -> Result<(i32, String)> {
    let exec = ExecProcessRequest {
        container_id: cid.into(),
        exec_id: exec_id.into(),
        process: Some(oci::Process {
            Args: args.iter().map(|a| a.to_string()).collect(),
            Env: vec!["PATH=/bin".into()],
            Cwd: "/".into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    agent.exec_process(ctx(), &exec).await?;
    let close = CloseStdinRequest {
        container_id: cid.into(),
        exec_id: exec_id.into(),
        ..Default::default()
    };
    agent.close_stdin(ctx(), &close).await?;
    let (out, _err, status) = tokio::try_join!(
        drain(agent, cid, exec_id, false),
        drain(agent, cid, exec_id, true),
        wait(agent, cid, exec_id)
    )?;
    Ok((status, out))
}

/// The agent's (PID 1) open descriptors and RSS in KiB, seen from `probe`.
async fn agent_usage(agent: &AgentServiceClient, probe: &str, n: usize) -> Result<(u64, u64)> {
    let (status, out) = exec_sh(
        agent,
        probe,
        &format!("usage{n}"),
        // stdin's EOF first: the agent holds this probe's stdin writer until
        // CloseStdin, which races the count otherwise (seen once the helper
        // spawn got faster: 26 -> 27 with the extra one our own writer).
        "cat >/dev/null; ls /proc/1/fd | wc -l; grep VmRSS /proc/1/status | tr -s ' ' | cut -d' ' -f2",
    )
    .await?;
    ensure!(status == 0, "usage probe failed: {out}");
    let mut v = out.lines().map(|l| l.trim().parse::<u64>());
    match (v.next(), v.next()) {
        (Some(Ok(fds)), Some(Ok(rss))) => Ok((fds, rss)),
        _ => anyhow::bail!("usage probe printed {out:?}"),
    }
}

async fn cpu_usage(agent: &AgentServiceClient, cid: &str) -> Result<u64> {
    let stats = stats(agent, cid).await?;
    Ok(stats
        .cgroup_stats
        .cpu_stats
        .cpu_usage
        .as_ref()
        .map(|u| u.total_usage)
        .unwrap_or(0))
}

async fn stats(agent: &AgentServiceClient, cid: &str) -> Result<StatsContainerResponse> {
    let req = StatsContainerRequest {
        container_id: cid.into(),
        ..Default::default()
    };
    Ok(agent.stats_container(ctx(), &req).await?)
}

/// Reads the agent's log port (hybrid vsock 1025) until `needle` shows up.
pub fn read_log_port(vm: &Vm, needle: &str) -> Result<String> {
    let mut s = vm.dial_port(1025, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut text = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.into()),
        }
        if String::from_utf8_lossy(&text).contains(needle) {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&text).into_owned())
}

/// `n` execs of `true` in `cid`, [`EXECS_IN_FLIGHT`] at a time; each must exit 0.
async fn exec_batch(agent: &AgentServiceClient, cid: &str, prefix: &str, n: usize) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        if set.len() >= EXECS_IN_FLIGHT {
            if let Some(r) = set.join_next().await {
                let (status, _) = r??;
                ensure!(status == 0, "exec failed");
            }
        }
        let (agent, cid, id) = (agent.clone(), cid.to_string(), format!("{prefix}{i}"));
        set.spawn(async move { exec_args(&agent, &cid, &id, &["true"]).await });
    }
    while let Some(r) = set.join_next().await {
        let (status, _) = r??;
        ensure!(status == 0, "exec failed");
    }
    Ok(())
}

pub async fn scenario(agent: &AgentServiceClient, vm: &Vm) -> Result<()> {
    // Logs on vsock port 1025 (agent.log_vport=1025 on the kernel command line).
    let log = read_log_port(vm, "agent ready")?;
    ensure!(
        log.contains("kata-agent starting") && log.contains("agent ready"),
        "log port gave: {log:.2000}"
    );

    // Guest details: the memory block size (for hotplug) and the storage drivers.
    let req = GuestDetailsRequest {
        mem_block_size: true,
        mem_hotplug_probe: true,
        ..Default::default()
    };
    let details = agent.get_guest_details(ctx(), &req).await?;
    ensure!(
        details.mem_block_size_bytes >= 1 << 20,
        "block size {}",
        details.mem_block_size_bytes
    );
    let handlers = &details.agent_details.storage_handlers;
    ensure!(
        handlers.iter().any(|h| h == "virtio-fs") && handlers.iter().any(|h| h == "9p"),
        "{handlers:?}"
    );
    // Nothing hot-plugged here: onlining is a no-op that succeeds.
    let online = OnlineCPUMemRequest {
        wait: false,
        nb_cpus: 0,
        cpu_only: false,
        ..Default::default()
    };
    agent.online_cpu_mem(ctx(), &online).await?;

    // A probe in the VM's pid namespace, to look at the agent (PID 1).
    let probe = "probe";
    run_container(agent, vm, probe, &["sleep", "600"], 64 << 20).await?;
    let (fds, rss) = agent_usage(agent, probe, 100).await?;
    eprintln!("agent idle (one container): {fds} fds, RSS {rss} KiB");

    // The guest clock.
    let when = SetGuestDateTimeRequest {
        Sec: 1_900_000_000, // 2030-03-17
        Usec: 0,
        ..Default::default()
    };
    agent.set_guest_date_time(ctx(), &when).await?;
    let (_, year) = exec_sh(agent, probe, "date", "date -u +%Y").await?;
    ensure!(year.trim() == "2030", "guest year {year:?}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let when = SetGuestDateTimeRequest {
        Sec: now.as_secs() as i64,
        Usec: i64::from(now.subsec_micros()),
        ..Default::default()
    };
    agent.set_guest_date_time(ctx(), &when).await?;

    // UpdateContainer: a new memory limit shows in the stats.
    let update = UpdateContainerRequest {
        container_id: probe.into(),
        resources: Some(oci::LinuxResources {
            Memory: Some(oci::LinuxMemory {
                Limit: 128 << 20,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    agent.update_container(ctx(), &update).await?;
    let s = stats(agent, probe).await?;
    ensure!(
        s.cgroup_stats.memory_stats.usage.limit == 128 << 20,
        "limit after update: {}",
        s.cgroup_stats.memory_stats.usage.limit
    );
    ensure!(
        s.network_stats.iter().any(|n| n.name == "lo"),
        "network stats: {:?}",
        s.network_stats
    );
    ensure!(
        s.cgroup_stats.blkio_stats.is_some(),
        "blkio stats present (may be empty without disks)"
    );

    // Pause: a spinning container's CPU usage stands still until resumed.
    let spin = "spin";
    run_container(
        agent,
        vm,
        spin,
        &["sh", "-c", "while :; do :; done"],
        64 << 20,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pause = PauseContainerRequest {
        container_id: spin.into(),
        ..Default::default()
    };
    agent.pause_container(ctx(), &pause).await?;
    let frozen = cpu_usage(agent, spin).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let later = cpu_usage(agent, spin).await?;
    ensure!(frozen > 0, "the spinner ran before the pause");
    ensure!(
        later == frozen,
        "CPU usage moved while paused: {frozen} -> {later} ns"
    );
    let resume = ResumeContainerRequest {
        container_id: spin.into(),
        ..Default::default()
    };
    agent.resume_container(ctx(), &resume).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resumed = cpu_usage(agent, spin).await?;
    ensure!(
        resumed > later,
        "CPU usage still after resume: {later} -> {resumed} ns"
    );
    eprintln!(
        "pause: usage {frozen} ns frozen for 1 s, +{} ns in 0.5 s after resume",
        resumed - later
    );
    remove(agent, spin).await?;

    // OOM: 32 MiB limit, 64 MiB touched → GetOOMEvent names it, exit 137.
    let oom_wait = {
        let agent = agent.clone();
        tokio::spawn(async move {
            let ctx = ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64);
            agent
                .get_oom_event(ctx, &GetOOMEventRequest::default())
                .await
        })
    };
    let oom = "oom";
    let alloc = ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"];
    run_container(agent, vm, oom, &alloc, 32 << 20).await?;
    let status = wait(agent, oom, "").await?;
    ensure!(status == 137, "OOM-killed exit status {status}");
    let event = tokio::time::timeout(Duration::from_secs(30), oom_wait)
        .await
        .context("GetOOMEvent did not return")??
        .context("GetOOMEvent")?;
    ensure!(
        event.container_id == oom,
        "OOM event for {:?}",
        event.container_id
    );
    remove(agent, oom).await?;

    // 1000 execs: the agent's descriptors and RSS come back to where they were.
    // Warm up at the same concurrency: the allocator's high-water mark is not a leak.
    exec_batch(agent, probe, "warm", 5 * EXECS_IN_FLIGHT).await?;
    // Let earlier containers' and execs' descriptors go (execs linger up to 100 ms).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds0, rss0) = agent_usage(agent, probe, 0).await?;
    let t = Instant::now();
    exec_batch(agent, probe, "x", EXECS).await?;
    let elapsed = t.elapsed();
    // Execs are forgotten up to 100 ms after they were waited for and drained.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds1, rss1) = agent_usage(agent, probe, 1).await?;
    eprintln!(
        "{EXECS} execs in {elapsed:.2?} ({:.1} ms each, {EXECS_IN_FLIGHT} in flight); \
         agent fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB",
        elapsed.as_secs_f64() * 1000.0 / EXECS as f64
    );
    ensure!(fds1 <= fds0, "agent descriptors {fds0} -> {fds1}");
    ensure!(
        rss1 <= rss0 + 1024,
        "agent RSS grew by more than 1 MiB: {rss0} -> {rss1} KiB"
    );

    // The agent's RSS with 10 containers (the probe + 9 sleepers).
    let sleepers: Vec<String> = (1..10).map(|i| format!("sleeper{i}")).collect();
    for cid in &sleepers {
        run_container(agent, vm, cid, &["sleep", "600"], 64 << 20).await?;
    }
    let (_, rss10) = agent_usage(agent, probe, 10).await?;
    eprintln!("agent RSS: {rss1} KiB with 1 container, {rss10} KiB with 10");
    for cid in &sleepers {
        remove(agent, cid).await?;
    }
    remove(agent, probe).await?;
    Ok(())
}
