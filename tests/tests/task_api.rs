//! The Task API through containerd (`ctr`), on real VMs: exec (with and
//! without a terminal), stdin, kill, pause/resume events, metrics, update,
//! two containers in one VM, and the shim's or QEMU's death.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use integration_tests::{
    assert_no_leftovers, leaks, on_both_containerds, require_vm, wait_until, Containerd, Dist,
};
use protocols::containerd::api;
use protocols::containerd::shim_async::TaskClient;
use protocols::containerd::ttrpc::{self, context, Code};
use protocols::protobuf::well_known_types::any::Any;

fn qemu_pids(scope: &str) -> Vec<u32> {
    let _ = scope;
    leaks::processes_mentioning(&format!("{}/", leaks::RUN_ROOT))
        .into_iter()
        .filter(|(_, cmd)| cmd.starts_with("qemu-system") || cmd.contains("/qemu-system"))
        .map(|(pid, _)| pid)
        .collect()
}

fn shim_pids(ctd: &Containerd) -> Vec<u32> {
    leaks::processes_mentioning(&ctd.dir.to_string_lossy())
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("containerd-shim-kata-v2"))
        .map(|(pid, _)| pid)
        .collect()
}

async fn shim_client(ctd: &Containerd, id: &str) -> Result<TaskClient> {
    let addr = ctd.shim_address(id)?;
    Ok(TaskClient::new(
        ttrpc::r#async::Client::connect(&addr)
            .await
            .context("connect shim")?,
    ))
}

fn ctx() -> ttrpc::context::Context {
    context::with_timeout(Duration::from_secs(30).as_nanos() as i64)
}

fn code_of<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn resources_any(json: serde_json::Value) -> Any {
    Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
        value: serde_json::to_vec(&json).expect("json"),
        ..Default::default()
    }
}

on_both_containerds!(one_container_through_the_task_api);
/// One VM, many operations: exec, tty exec, stdin, pause/resume events,
/// metrics, update, bad requests, kill.
async fn one_container_through_the_task_api(dist: Dist) -> Result<()> {
    require_vm!();
    let ctd = {
        let dist = dist.clone();
        tokio::task::spawn_blocking(move || Containerd::start_on(&dist)).await??
    };
    let events = ctd.events()?;
    // containerd's default spec has no cgroup filesystem; mount one so the
    // container can read its own limits.
    ctd.run_detached(
        "box",
        &[
            "--mount",
            "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro",
        ],
        &["sleep", "3600"],
    )?;
    assert_eq!(ctd.task_status("box").as_deref(), Some("RUNNING"));

    // Exec without a terminal: output and exit code.
    let out = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "box",
        "sh",
        "-c",
        "echo exec-out; exit 3",
    ])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "exec-out");
    events.wait_for("/tasks/exec-added", "e1", Duration::from_secs(5))?;
    events.wait_for("/tasks/exec-started", "e1", Duration::from_secs(5))?;

    // Exec with a terminal (ctr wants a tty of its own: `script` gives it one).
    let addr = ctd.socket.to_string_lossy().into_owned();
    let tty = Command::new("script")
        .args(["-qec", &format!("ctr --address {addr} -n kata-test task exec -t --exec-id t1 box sh -c 'tty; stty size'"), "/dev/null"])
        .output()?;
    let tty_out = String::from_utf8_lossy(&tty.stdout).replace('\r', "");
    assert!(
        tty.status.success(),
        "tty exec failed: {tty_out} {}",
        String::from_utf8_lossy(&tty.stderr)
    );
    assert!(
        tty_out.contains("/dev/pts/"),
        "no pty in the container: {tty_out:?}"
    );

    // Stdin round trip.
    let mut child = Command::new(ctd.dist.ctr())
        .args([
            "--address",
            &addr,
            "-n",
            "kata-test",
            "task",
            "exec",
            "--exec-id",
            "in1",
            "box",
            "cat",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(b"hello through stdin\n")?;
    }
    let out = child.wait_with_output()?;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello through stdin"
    );

    // A long stdout arrives whole and in order (1.2 MB of `seq`: many
    // ReadStdout chunks, run-ahead reads in the shim, a grown guest pipe).
    let seq = ctd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "seq1",
        "box",
        "seq",
        "1",
        "200000",
    ])?;
    assert!(
        seq.status.success(),
        "{}",
        String::from_utf8_lossy(&seq.stderr)
    );
    let want: String = (1..=200_000).map(|i| format!("{i}\n")).collect();
    assert_eq!(seq.stdout.len(), want.len(), "seq output length");
    assert!(seq.stdout == want.as_bytes(), "seq output differs");

    // Small writes are not held back: the first line arrives while the
    // process still sleeps, well before the second.
    let mut child = Command::new(ctd.dist.ctr())
        .args(["--address", &addr, "-n", "kata-test", "task", "exec"])
        .args(["--exec-id", "prompt1", "box", "sh", "-c"])
        .arg("echo first; sleep 4; echo second")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::BufRead;
        let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = lines.next().context("first line")??;
        let t = std::time::Instant::now();
        let second = lines.next().context("second line")??;
        assert_eq!((first.as_str(), second.as_str()), ("first", "second"));
        assert!(
            t.elapsed() >= Duration::from_secs(2),
            "the first line was held back until {:?} before the second",
            t.elapsed()
        );
    }
    assert!(child.wait()?.success());

    // Duplicate exec id while the first is running → AlreadyExists; shim keeps serving.
    ctd.ctr_ok(&[
        "task",
        "exec",
        "-d",
        "--exec-id",
        "long",
        "box",
        "sleep",
        "600",
    ])?;
    let dup = ctd.ctr(&["task", "exec", "--exec-id", "long", "box", "true"])?;
    assert!(!dup.status.success());
    assert!(
        String::from_utf8_lossy(&dup.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&dup.stderr)
    );

    // Metrics: non-zero CPU and memory.
    let metrics = ctd.ctr_ok(&["task", "metrics", "box"])?;
    // Typed for the host's cgroup mode: v1 names (cpuacct.usage,
    // memory.usage_in_bytes) or v2 names (cpu.usage_usec, memory.usage).
    let value = |names: &[&str]| -> u64 {
        metrics
            .lines()
            .filter_map(|l| {
                let mut cols = l.split_whitespace();
                let name = cols.next()?;
                names
                    .contains(&name)
                    .then(|| cols.next()?.parse::<u64>().ok())?
            })
            .next()
            .unwrap_or(0)
    };
    assert!(
        value(&["cpuacct.usage", "cpu.usage_usec"]) > 0,
        "CPU: {metrics}"
    );
    assert!(
        value(&["memory.usage_in_bytes", "memory.usage"]) > 0,
        "memory: {metrics}"
    );

    // Update the memory limit; the guest's cgroup shows it.
    let client = shim_client(&ctd, "box").await?;
    let limit = 96 * 1024 * 1024;
    client
        .update(
            ctx(),
            &api::UpdateTaskRequest {
                id: "box".into(),
                resources: Some(resources_any(
                    serde_json::json!({"memory": {"limit": limit}}),
                ))
                .into(),
                ..Default::default()
            },
        )
        .await
        .context("update")?;
    let max = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "m1",
        "box",
        "sh",
        "-c",
        "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max",
    ])?;
    assert_eq!(max.trim(), limit.to_string());
    // Negative limits are refused with InvalidArgument.
    let bad = client
        .update(
            ctx(),
            &api::UpdateTaskRequest {
                id: "box".into(),
                resources: Some(resources_any(serde_json::json!({"memory": {"limit": -5}}))).into(),
                ..Default::default()
            },
        )
        .await;
    assert_eq!(code_of(bad), Code::INVALID_ARGUMENT);
    // Start twice → FailedPrecondition; Delete while running → FailedPrecondition.
    assert_eq!(
        code_of(
            client
                .start(
                    ctx(),
                    &api::StartRequest {
                        id: "box".into(),
                        ..Default::default()
                    }
                )
                .await
        ),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(
        code_of(
            client
                .delete(
                    ctx(),
                    &api::DeleteRequest {
                        id: "box".into(),
                        ..Default::default()
                    }
                )
                .await
        ),
        Code::FAILED_PRECONDITION
    );

    // Pause / resume, seen as state and as events.
    ctd.ctr_ok(&["task", "pause", "box"])?;
    assert_eq!(ctd.task_status("box").as_deref(), Some("PAUSED"));
    ctd.ctr_ok(&["task", "resume", "box"])?;
    assert_eq!(ctd.task_status("box").as_deref(), Some("RUNNING"));
    events.wait_for("/tasks/paused", "box", Duration::from_secs(5))?;
    events.wait_for("/tasks/resumed", "box", Duration::from_secs(5))?;
    // Still serving after all that.
    let out = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "box",
        "echo",
        "still here",
    ])?;
    assert_eq!(out.trim(), "still here");

    // Kill: the container's init is pid 1 of its namespace and ignores
    // SIGTERM by default (as under runc); SIGKILL ends it with 137.
    ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", "box"])?;
    wait_until(Duration::from_secs(10), || {
        ctd.task_status("box").as_deref() == Some("STOPPED")
    })?;
    events.wait_for("/tasks/exit", "box", Duration::from_secs(5))?;
    let exit_line = events
        .text()
        .lines()
        .find(|l| l.contains("/tasks/exit") && l.contains("\"id\":\"box\""))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(exit_line.contains("137"), "exit event: {exit_line}");
    ctd.ctr_ok(&["task", "delete", "box"])?;
    ctd.ctr_ok(&["container", "rm", "box"])?;
    drop(client);
    drop(events);
    assert_no_leftovers(ctd);
    Ok(())
}

#[test]
fn two_containers_share_one_vm() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    ctd.run_detached(
        "pod",
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=sandbox",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod",
        ],
        &["sleep", "3600"],
    )?;
    ctd.run_detached(
        "app",
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "io.kubernetes.cri.sandbox-id=pod",
        ],
        &["sleep", "3600"],
    )?;
    let scope = ctd.dir.to_string_lossy().into_owned();
    assert_eq!(qemu_pids(&scope).len(), 1, "one QEMU for the pod");
    assert_eq!(shim_pids(&ctd).len(), 1, "one shim daemon for the pod");
    let a = ctd.ctr_ok(&["task", "exec", "--exec-id", "x", "app", "hostname"])?;
    let b = ctd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "x",
        "pod",
        "cat",
        "/etc/kata-test-marker",
    ])?;
    assert!(!a.trim().is_empty());
    assert_eq!(b.trim(), "kata-busybox image marker");
    ctd.remove("app");
    assert_eq!(
        qemu_pids(&scope).len(),
        1,
        "the VM lives as long as the pod"
    );
    ctd.remove("pod");
    assert_no_leftovers(ctd);
    Ok(())
}

#[test]
fn killed_shim_is_cleaned_up_by_delete() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    ctd.run_detached("victim", &[], &["sleep", "3600"])?;
    let shims = shim_pids(&ctd);
    assert_eq!(shims.len(), 1);
    // SAFETY: kill(2) of a process this test's containerd started.
    unsafe { libc::kill(shims[0] as i32, libc::SIGKILL) };
    // containerd notices, runs `containerd-shim-kata-v2 delete`, and the task is gone.
    wait_until(Duration::from_secs(20), || {
        ctd.task_status("victim").as_deref() != Some("RUNNING")
    })?;
    let _ = ctd.ctr(&["task", "delete", "victim"]);
    ctd.ctr_ok(&["container", "rm", "victim"])?;
    assert_no_leftovers(ctd);
    Ok(())
}

on_both_containerds!(sync killed_qemu_reports_exit_and_cleans_up_fast);
fn killed_qemu_reports_exit_and_cleans_up_fast(dist: Dist) -> Result<()> {
    require_vm!();
    let ctd = Containerd::start_on(&dist)?;
    let events = ctd.events()?;
    ctd.run_detached("doomed", &[], &["sleep", "3600"])?;
    let scope = ctd.dir.to_string_lossy().into_owned();
    let qemu = qemu_pids(&scope);
    assert_eq!(qemu.len(), 1);
    let t = Instant::now();
    // SAFETY: kill(2) of the test's own VM.
    unsafe { libc::kill(qemu[0] as i32, libc::SIGKILL) };
    events.wait_for("/tasks/exit", "doomed", Duration::from_secs(2))?;
    let reported = t.elapsed();
    wait_until(Duration::from_secs(2), || {
        leaks::processes_mentioning(&format!("{}/", leaks::RUN_ROOT)).is_empty()
    })
    .context("helpers still running 2 s after QEMU died")?;
    eprintln!("exit reported {reported:?} after QEMU was killed");
    ctd.ctr_ok(&["task", "delete", "doomed"])?;
    ctd.ctr_ok(&["container", "rm", "doomed"])?;
    drop(events);
    assert_no_leftovers(ctd);
    Ok(())
}
