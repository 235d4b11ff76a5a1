//! The pod half of the VM scenario, driven through the shim's own client
//! (`agent-client`, a second connection to the same VM): two containers side
//! by side, signals (one process or all, SIGTERM → 143), ListProcesses, bad
//! input mapped to exact codes while the agent keeps serving; `security`
//! checks that the spec's process and filesystem restrictions and seccomp
//! profile are in force inside the container.
mod security;

use std::time::Duration;

use agent_client::{Address, Agent};
use anyhow::{bail, ensure, Context, Result};
use protocols::agent::{ExecProcessRequest, ListProcessesRequest};
use protocols::oci;
use protocols::ttrpc::Code;

use crate::common::*;

/// Runs `sh -c script` in `cid` (stdin closed); returns (status, stdout, stderr).
pub async fn exec(
    agent: &dyn Agent,
    cid: &str,
    exec_id: &str,
    script: &str,
) -> Result<(i32, String, String)> {
    agent
        .exec_process(exec_req(cid, exec_id, &["sh", "-c", script]))
        .await?;
    agent.close_stdin(cid, exec_id).await?;
    let (out, err, status) = tokio::try_join!(
        read_all(agent, cid, exec_id, false),
        read_all(agent, cid, exec_id, true),
        async { Ok(agent.wait_process(cid, exec_id).await?) }
    )?;
    Ok((status, out, err))
}

pub fn exec_req(cid: &str, exec_id: &str, args: &[&str]) -> ExecProcessRequest {
    ExecProcessRequest {
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
    }
}

pub async fn read_all(agent: &dyn Agent, cid: &str, exec_id: &str, stderr: bool) -> Result<String> {
    let mut out = Vec::new();
    loop {
        let chunk = if stderr {
            agent.read_stderr(cid, exec_id, 64 << 10).await?
        } else {
            agent.read_stdout(cid, exec_id, 64 << 10).await?
        };
        match chunk {
            Some(c) => out.extend_from_slice(&c),
            None => return Ok(String::from_utf8_lossy(&out).into_owned()),
        }
    }
}

/// Creates and starts `cid` from `spec` (its rootfs must exist); closes the init's stdin.
pub async fn run(agent: &dyn Agent, cid: &str, spec: oci::Spec) -> Result<()> {
    agent.create_container(create_req(cid, spec)).await?;
    agent.start_container(cid).await?;
    agent.close_stdin(cid, "").await?;
    Ok(())
}

/// The code of an agent error, or a failure naming what was expected.
fn expect_code<T: std::fmt::Debug>(
    r: agent_client::Result<T>,
    want: Code,
    what: &str,
) -> Result<()> {
    match r {
        Err(e) if e.code() == Some(want) => Ok(()),
        other => bail!("{what}: expected {want:?}, got {other:?}"),
    }
}

async fn pids(agent: &dyn Agent, cid: &str) -> Result<Vec<u32>> {
    let req = ListProcessesRequest {
        container_id: cid.into(),
        format: "json".into(),
        ..Default::default()
    };
    let list = agent.list_processes(req).await?;
    let text = String::from_utf8(list.process_list)?;
    text.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse::<u32>().context("pid in ListProcesses"))
        .collect()
}

/// A `sleep 300` container with its own pid, uts, ipc and mount namespaces,
/// a hostname and a `/marker` file of its own.
fn sleeper(vm: &Vm, cid: &str, marker: &str) -> Result<oci::Spec> {
    make_rootfs(&vm.shared(), cid)?;
    std::fs::write(vm.shared().join(cid).join("rootfs/marker"), marker)?;
    let mut spec = container_spec(cid, &["sleep", "300"]);
    spec.Hostname = format!("host-{marker}");
    Ok(spec)
}

pub async fn scenario(vm: &Vm) -> Result<()> {
    let addr = Address::Hybrid {
        uds_path: vm.dir.path().join("vsock.sock"),
        port: 1024,
    };
    let agent = agent_client::connect(&addr, Duration::from_secs(30), &|| String::new()).await?;
    let agent = agent.as_ref();

    // Two containers in one sandbox, both running: each sees its own rootfs,
    // hostname and processes.
    run(agent, "pa", sleeper(vm, "pa", "a")?).await?;
    run(agent, "pb", sleeper(vm, "pb", "b")?).await?;
    let look = "cat /marker; echo; hostname; echo /proc/[0-9]*; cat /proc/1/comm";
    for (cid, marker) in [("pa", "a"), ("pb", "b")] {
        let (status, out, err) = exec(agent, cid, "look", look).await?;
        ensure!(status == 0, "{cid}: {out}{err}");
        let lines: Vec<&str> = out.lines().collect();
        ensure!(
            lines.len() == 4
                && lines[0] == marker
                && lines[1] == format!("host-{marker}")
                && lines[2].split(' ').count() == 2
                && lines[3] == "sleep",
            "{cid} sees its own rootfs, hostname and only its init + the exec: {out:?}"
        );
    }

    // SignalProcess: one exec, then all of the container.
    for id in ["s1", "s2"] {
        agent
            .exec_process(exec_req("pb", id, &["sleep", "301"]))
            .await?;
        agent.close_stdin("pb", id).await?;
    }
    expect_code(
        agent.exec_process(exec_req("pb", "s2", &["true"])).await,
        Code::ALREADY_EXISTS,
        "duplicate exec id",
    )?;
    let before = pids(agent, "pb").await?;
    ensure!(before.len() == 3, "init + 2 sleeping execs: {before:?}");
    agent.signal_process("pb", "s1", 9).await?;
    ensure!(agent.wait_process("pb", "s1").await? == 137, "s1 SIGKILLed");
    let after = pids(agent, "pb").await?;
    ensure!(
        after.len() == 2 && after.iter().all(|p| before.contains(p)),
        "only s1 went: {before:?} -> {after:?}"
    );

    // Killing one container leaves the other serving.
    agent.signal_process("pa", "", 9).await?;
    ensure!(agent.wait_process("pa", "").await? == 137, "pa SIGKILLed");
    expect_code(
        agent.exec_process(exec_req("pa", "late", &["true"])).await,
        Code::FAILED_PRECONDITION,
        "exec into a stopped container",
    )?;
    let (status, out, _) = exec(agent, "pb", "still", "cat /marker").await?;
    ensure!(
        status == 0 && out == "b",
        "pb still serves: {status} {out:?}"
    );
    let stats = agent.stats_container("pb").await?;
    ensure!(stats.cgroup_stats.pids_stats.current >= 2, "{stats:?}");
    agent.signal_process("pb", "", 9).await?;
    ensure!(
        agent.wait_process("pb", "s2").await? == 137,
        "s2 killed by kill-all"
    );
    ensure!(
        agent.wait_process("pb", "").await? == 137,
        "pb init killed by kill-all"
    );

    // SIGTERM to a `sleep` init that is not PID 1 of a pid namespace (as in a
    // pod sharing its pid namespace): default action, 128 + 15.
    make_rootfs(&vm.shared(), "pt")?;
    let mut spec = container_spec("pt", &["sleep", "300"]);
    if let Some(l) = spec.Linux.as_mut() {
        l.Namespaces.retain(|n| n.Type != "pid");
    }
    run(agent, "pt", spec).await?;
    exec_latency(agent, "pt").await?;
    // The container's init is PID 1 of its own PID namespace (as under
    // runc), where a SIGTERM without a handler is ignored: SIGKILL ends it.
    agent.signal_process("pt", "pt", 9).await?;
    ensure!(agent.wait_process("pt", "").await? == 137, "SIGKILL -> 137");

    shared_pid_namespace(agent, vm).await?;
    bad_input(agent, vm).await?;
    security::scenario(agent, vm).await?;

    for cid in ["pa", "pb", "pt", "qa", "qb"] {
        agent.remove_container(cid, 10).await?;
    }
    Ok(())
}

/// A pod without a sandbox container (containerd's Sandbox API): the
/// namespace CreateSandbox asked for (`sandbox_pidns`) is held by the
/// agent's holder; containers sharing it see each other, the holder as PID 1.
async fn shared_pid_namespace(agent: &dyn Agent, vm: &Vm) -> Result<()> {
    for cid in ["qa", "qb"] {
        let mut req = create_req(cid, sleeper(vm, cid, cid)?);
        req.sandbox_pidns = true;
        agent.create_container(req).await?;
        agent.start_container(cid).await?;
        agent.close_stdin(cid, "").await?;
    }
    let look = "for p in /proc/1 /proc/[0-9]*; do cat $p/comm; done";
    let (status, out, err) = exec(agent, "qb", "look", look).await?;
    ensure!(status == 0, "{out}{err}");
    let comms: Vec<&str> = out.lines().collect();
    ensure!(
        comms.first() == Some(&"pod-pidns-init")
            && comms.iter().filter(|c| **c == "sleep").count() == 2
            && !comms.contains(&"kata-agent"),
        "qb sees the holder as PID 1 and both pod containers, never the agent: {out:?}"
    );
    for cid in ["qa", "qb"] {
        agent.signal_process(cid, "", 9).await?;
        ensure!(agent.wait_process(cid, "").await? == 137, "{cid} SIGKILLed");
    }
    Ok(())
}

/// ExecProcess → WaitProcess of `true`, one at a time, as `ctr task exec`
/// does it (output drained, stdin closed); prints the figures.
async fn exec_latency(agent: &dyn Agent, cid: &str) -> Result<()> {
    let mut times = Vec::new();
    for i in 0..20 {
        let t = std::time::Instant::now();
        let (status, _, _) = exec(agent, cid, &format!("lat{i}"), "true").await?;
        ensure!(status == 0, "exec {i} failed");
        times.push(t.elapsed());
    }
    times.sort();
    eprintln!(
        "exec latency (sh -c true, 20 in a row): median {:.1?}, min {:.1?}, max {:.1?}",
        times[times.len() / 2],
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}

/// Each kind of bad request gets its exact code, and the agent keeps serving.
async fn bad_input(agent: &dyn Agent, vm: &Vm) -> Result<()> {
    make_rootfs(&vm.shared(), "bad")?;
    let good = || container_spec("bad", &["sh", "-c", "echo fine"]);
    let mut no_process = good();
    no_process.Process.clear();
    let mut relative_cwd = good();
    if let Some(p) = relative_cwd.Process.as_mut() {
        p.Cwd = "tmp".into();
    }
    let mut unknown_ns = good();
    if let Some(l) = unknown_ns.Linux.as_mut() {
        l.Namespaces.push(oci::LinuxNamespace {
            Type: "bogus".into(),
            ..Default::default()
        });
    }
    for (what, spec) in [
        ("no process", no_process),
        ("relative cwd", relative_cwd),
        ("unknown namespace type", unknown_ns),
    ] {
        expect_code(
            agent.create_container(create_req("bad", spec)).await,
            Code::INVALID_ARGUMENT,
            what,
        )?;
    }
    expect_code(
        agent.create_container(create_req("pb", good())).await,
        Code::ALREADY_EXISTS,
        "duplicate container id",
    )?;
    expect_code(
        agent.start_container("nope").await,
        Code::NOT_FOUND,
        "start unknown",
    )?;
    expect_code(
        agent.exec_process(exec_req("nope", "e", &["true"])).await,
        Code::NOT_FOUND,
        "exec into unknown",
    )?;
    expect_code(
        agent.signal_process("nope", "", 9).await,
        Code::NOT_FOUND,
        "signal unknown",
    )?;
    expect_code(
        agent.stats_container("nope").await,
        Code::NOT_FOUND,
        "stats unknown",
    )?;
    expect_code(
        agent.remove_container("nope", 1).await,
        Code::NOT_FOUND,
        "remove unknown",
    )?;
    // The rejected creates left nothing behind: the same id now works.
    agent.check().await?;
    agent.create_container(create_req("bad", good())).await?;
    agent.start_container("bad").await?;
    expect_code(
        agent.start_container("bad").await,
        Code::FAILED_PRECONDITION,
        "start twice",
    )?;
    let out = read_all(agent, "bad", "", false).await?;
    ensure!(
        agent.wait_process("bad", "").await? == 0 && out == "fine\n",
        "{out:?}"
    );
    expect_code(
        agent.exec_process(exec_req("bad", "late", &["true"])).await,
        Code::FAILED_PRECONDITION,
        "exec into an exited container",
    )?;
    agent.remove_container("bad", 10).await?;
    Ok(())
}
