//! Load on real VMs (issue: untrusted guest, load): twenty pods started at
//! once, each with its own exit code to report; five hundred execs with
//! stdin in one pod; fifty containers of one pod created, killed and
//! deleted at once. No exit code may be lost, the shim may not keep a
//! descriptor per exec, and nothing may be left behind. The figures
//! (times, descriptors) are printed for the closing notes.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_shim_kata_v2::persist::SandboxPaths;
use integration_tests::{
    assert_no_leftovers, leaks, require_vm, wait_until, write_config, Containerd, NAMESPACE,
};

const PODS: usize = 20;
const EXECS: usize = 500;
/// Execs in flight at once (each is a `ctr` process on the host).
const WAVE: usize = 50;

/// The exit status of `id` as its `/tasks/exit` event carries it.
fn exit_status(events: &str, id: &str) -> Option<u32> {
    let line = events
        .lines()
        .find(|l| l.contains("/tasks/exit") && l.contains(&format!("\"id\":\"{id}\"")))?;
    let rest = line.split("\"exit_status\":").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    // protobuf's JSON leaves a zero status out.
    Some(digits.parse().unwrap_or(0))
}

#[test]
fn twenty_pods_at_once_report_every_exit_and_leave_nothing() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    // Twenty TCG guests booting on a two-core host take minutes of guest
    // time; the default dial timeout (60 s) is for one boot, not a stampede.
    write_config(&ctd.config, |t| {
        t.replace("dial_timeout = 60", "dial_timeout = 300")
    })?;
    let events = ctd.events()?;
    let ids: Vec<String> = (0..PODS).map(|i| format!("many-{i}")).collect();
    let t = Instant::now();
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let ctd = &ctd;
                let script = format!("sleep 20; exit {}", i + 1);
                s.spawn(move || ctd.run_detached(id, &[], &["sh", "-c", &script]))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("thread panicked")))
            .collect()
    });
    let started = t.elapsed();
    let mut errors = Vec::new();
    for (id, r) in ids.iter().zip(&results) {
        if let Err(e) = r {
            errors.push(format!("{id}: {e:#}"));
        }
    }
    let qemus = ids
        .iter()
        .filter(|id| {
            let base = SandboxPaths::new(std::path::Path::new(leaks::RUN_ROOT), id).base;
            leaks::processes_mentioning(&base.to_string_lossy())
                .iter()
                .any(|(_, c)| c.contains("qemu-system"))
        })
        .count();
    // Every pod's own code, none lost or mixed up.
    let all_reported = wait_until(Duration::from_secs(300), || {
        let text = events.text();
        ids.iter().all(|id| exit_status(&text, id).is_some())
    });
    let text = events.text();
    for (i, id) in ids.iter().enumerate() {
        match exit_status(&text, id) {
            Some(code) if code == i as u32 + 1 => {}
            other => errors.push(format!("{id}: exit {other:?}, want {}", i + 1)),
        }
    }
    eprintln!(
        "{PODS} pods: all started {started:.1?} after the first ctr run; {} exits reported",
        ids.iter()
            .filter(|id| exit_status(&text, id).is_some())
            .count()
    );
    for id in &ids {
        ctd.remove(id);
    }
    drop(events);
    assert!(errors.is_empty(), "{errors:#?}");
    all_reported?;
    assert_eq!(qemus, PODS, "one QEMU per pod");
    assert_no_leftovers(ctd);
    Ok(())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `ctr task exec` of exec `n`: reads a line from stdin, echoes it, exits n % 7.
fn exec_with_stdin(ctd: &Containerd, n: usize) -> Result<()> {
    let mut child = Command::new(ctd.dist.ctr())
        .arg("--address")
        .arg(&ctd.socket)
        .args(["--namespace", NAMESPACE, "task", "exec", "--exec-id"])
        .arg(format!("e{n}"))
        .args(["pod", "sh", "-c", "read x; echo got $x; exit $((x % 7))"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{n}")?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let code = out.status.code();
    if stdout.trim() != format!("got {n}") || code != Some((n % 7) as i32) {
        bail!(
            "exec {n}: stdout {stdout:?}, exit {code:?}, stderr {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[test]
fn five_hundred_execs_with_stdin_in_one_pod_lose_nothing() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    ctd.run_detached("pod", &[], &["sleep", "3600"])?;
    let shim = leaks::processes_mentioning(&ctd.dir.to_string_lossy())
        .into_iter()
        .find(|(_, cmd)| cmd.contains("containerd-shim-kata-v2"))
        .map(|(pid, _)| pid)
        .context("no shim")?;
    // One exec first: lazily opened descriptors (e.g. the agent's second
    // connection) are not leaks.
    exec_with_stdin(&ctd, 0)?;
    let fds_before = open_fds(shim);
    let t = Instant::now();
    let mut failures = Vec::new();
    for wave in (1..=EXECS).collect::<Vec<_>>().chunks(WAVE) {
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = wave
                .iter()
                .map(|&n| {
                    let ctd = &ctd;
                    s.spawn(move || exec_with_stdin(ctd, n))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| bail!("thread panicked")))
                .collect()
        });
        failures.extend(
            results
                .into_iter()
                .filter_map(Result::err)
                .map(|e| format!("{e:#}")),
        );
    }
    let took = t.elapsed();
    // Exec state is released when containerd deletes each exec.
    let settled = wait_until(Duration::from_secs(10), || open_fds(shim) <= fds_before);
    let fds_after = open_fds(shim);
    eprintln!(
        "{EXECS} execs with stdin, {WAVE} at a time: {took:.1?} ({:.0} ms each); \
         shim fds {fds_before} -> {fds_after}; {} failed",
        took.as_secs_f64() * 1000.0 / EXECS as f64,
        failures.len()
    );
    ctd.remove("pod");
    assert!(
        failures.is_empty(),
        "{} failed: {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    settled.with_context(|| format!("shim descriptors {fds_before} -> {fds_after}"))?;
    assert_no_leftovers(ctd);
    Ok(())
}

const APPS: usize = 50;

/// Runs `f(i)` for every `i` in `0..n` on threads at once; the errors.
fn all_at_once(n: usize, f: impl Fn(usize) -> Result<()> + Sync) -> Vec<String> {
    let f = &f;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|i| (i, s.spawn(move || f(i)))).collect();
        handles
            .into_iter()
            .filter_map(|(i, h)| match h.join() {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{i}: {e:#}")),
                Err(_) => Some(format!("{i}: thread panicked")),
            })
            .collect()
    })
}

#[test]
fn fifty_containers_of_one_pod_created_killed_and_deleted_at_once() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let events = ctd.events()?;
    let pod_annotations = |kind: &str| {
        vec![
            "--annotation".to_owned(),
            format!("io.kubernetes.cri.container-type={kind}"),
            "--annotation".to_owned(),
            "io.kubernetes.cri.sandbox-id=pod".to_owned(),
        ]
    };
    let sandbox: Vec<String> = pod_annotations("sandbox");
    let sandbox: Vec<&str> = sandbox.iter().map(String::as_str).collect();
    ctd.run_detached("pod", &sandbox, &["sleep", "3600"])?;
    let shim = leaks::processes_mentioning(&ctd.dir.to_string_lossy())
        .into_iter()
        .find(|(_, cmd)| cmd.contains("containerd-shim-kata-v2"))
        .map(|(pid, _)| pid)
        .context("no shim")?;
    let fds_before = open_fds(shim);
    let app: Vec<String> = pod_annotations("container");
    let app: Vec<&str> = app.iter().map(String::as_str).collect();
    let t = Instant::now();
    let mut failures = all_at_once(APPS, |i| {
        ctd.run_detached(&format!("app-{i}"), &app, &["sleep", "3600"])
    });
    let created = t.elapsed();
    let t = Instant::now();
    failures.extend(all_at_once(APPS, |i| {
        ctd.ctr_ok(&["task", "kill", "-s", "SIGKILL", &format!("app-{i}")])
            .map(drop)
    }));
    // Each container's own exit, 137, before its delete.
    let reported = wait_until(Duration::from_secs(60), || {
        let text = events.text();
        (0..APPS).all(|i| exit_status(&text, &format!("app-{i}")).is_some())
    });
    let text = events.text();
    for i in 0..APPS {
        let status = exit_status(&text, &format!("app-{i}"));
        if status != Some(137) {
            failures.push(format!("app-{i}: exit {status:?}, want 137"));
        }
    }
    failures.extend(all_at_once(APPS, |i| {
        let id = format!("app-{i}");
        ctd.ctr_ok(&["task", "delete", &id])?;
        ctd.ctr_ok(&["container", "rm", &id]).map(drop)
    }));
    let gone = t.elapsed();
    let settled = wait_until(Duration::from_secs(10), || open_fds(shim) <= fds_before);
    let fds_after = open_fds(shim);
    let qemus = leaks::processes_mentioning(&format!("{}/", leaks::RUN_ROOT))
        .iter()
        .filter(|(_, c)| c.contains("qemu-system"))
        .count();
    eprintln!(
        "{APPS} containers in one pod: created in {created:.1?}, killed and deleted in \
         {gone:.1?}; shim fds {fds_before} -> {fds_after}; {} failures",
        failures.len()
    );
    ctd.remove("pod");
    drop(events);
    assert!(failures.is_empty(), "{failures:#?}");
    reported?;
    assert_eq!(qemus, 1, "one VM for the pod");
    settled.with_context(|| format!("shim descriptors {fds_before} -> {fds_after}"))?;
    assert_no_leftovers(ctd);
    Ok(())
}
