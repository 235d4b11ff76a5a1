//! The fault matrix of pod start (issue: untrusted guest, faults): the shim
//! is held at each phase of pod start by its test failpoints (before the
//! VM, before the agent is dialed, before CreateSandbox, before
//! CreateContainer) while `kill -9` hits QEMU, virtiofsd, vhost-device-vsock
//! or the shim itself. Every case must end promptly — the create fails with
//! an error, or the container runs and its exit is reported — and leave
//! nothing behind (processes, mounts, directories under the run root).
//! The streaming phase is covered by `security.rs`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use containerd_shim_kata_v2::persist::SandboxPaths;
use integration_tests::{leaks, require_vm, wait_until, Containerd, IMAGE, NAMESPACE, RUNTIME};

/// How long a failed pod start may take to come back to the caller.
const BOUND: Duration = Duration::from_secs(45);

/// `ctr run -d` in the background (it blocks while the shim is held).
fn spawn_run(ctd: &Containerd, id: &str) -> Result<Child> {
    Command::new(ctd.dist.ctr())
        .arg("--address")
        .arg(&ctd.socket)
        .args(["--namespace", NAMESPACE, "run", "-d", "--runtime", RUNTIME])
        .args([IMAGE, id, "sleep", "3600"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("ctr run")
}

/// The pid of `victim` for sandbox `id`.
fn victim_pid(ctd: &Containerd, id: &str, victim: &str) -> Result<u32> {
    let found = if victim == "shim" {
        // The daemon serving this sandbox (`-id <id>` on its command line).
        leaks::processes_mentioning(&ctd.dir.to_string_lossy())
            .into_iter()
            .find(|(_, cmd)| {
                let args: Vec<&str> = cmd.split_whitespace().collect();
                cmd.contains("containerd-shim-kata-v2") && args.windows(2).any(|w| w == ["-id", id])
            })
    } else {
        let base = SandboxPaths::new(std::path::Path::new(leaks::RUN_ROOT), id).base;
        leaks::processes_mentioning(&base.to_string_lossy())
            .into_iter()
            .find(|(_, cmd)| cmd.contains(victim))
    };
    match found {
        Some((pid, _)) => Ok(pid),
        None => bail!("no {victim} process for {id}"),
    }
}

/// Waits for `child` at most `bound`; kills it after that.
fn finish(mut child: Child, bound: Duration) -> Result<(bool, String)> {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let out = child.wait_with_output()?;
            let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            return Ok((status.success(), text));
        }
        if t.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ctr run still blocked after {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One case: hold pod start at `phase`, kill `victim`, let it go on.
/// Returns how the start ended, for the report.
fn case(ctd: &Containerd, phase: &str, victim: &str) -> Result<String> {
    let id = format!("f-{}-{}", phase.replace('_', ""), victim.replace('-', ""));
    ctd.arm(phase)?;
    let run = spawn_run(ctd, &id)?;
    let held = ctd.held_at(phase, Duration::from_secs(60));
    let sandbox = match held {
        Ok(s) => s,
        Err(e) => {
            ctd.disarm(phase);
            let _ = finish(run, BOUND);
            return Err(e);
        }
    };
    let pid = victim_pid(ctd, &sandbox, victim);
    if let Ok(pid) = pid {
        // SAFETY: kill(2) of a process of this test's own pod.
        unsafe { libc::kill(i32::try_from(pid)?, libc::SIGKILL) };
    }
    std::thread::sleep(Duration::from_millis(200));
    ctd.disarm(phase);
    pid?;
    let t = Instant::now();
    let (ok, err) = finish(run, BOUND)?;
    let took = t.elapsed();
    let outcome = if ok {
        // The container came up on what was left (e.g. a helper the VM no
        // longer needed): it must die with its VM and say so.
        wait_until(Duration::from_secs(20), || {
            ctd.task_status(&id).as_deref() != Some("RUNNING")
        })
        .with_context(|| format!("{id}: runs on after {victim} was killed"))?;
        format!("started, then its exit reported ({took:.1?})")
    } else {
        format!(
            "create failed in {took:.1?}: {}",
            err.lines().last().unwrap_or("")
        )
    };
    ctd.remove(&id);
    let base = SandboxPaths::new(std::path::Path::new(leaks::RUN_ROOT), &sandbox).base;
    wait_until(Duration::from_secs(15), || {
        leaks::processes_mentioning(&base.to_string_lossy()).is_empty()
            && leaks::mounts_under(&base.to_string_lossy()).is_empty()
            && !base.exists()
    })
    .with_context(|| format!("{id}: left behind: {:#?}", leaks::leftovers(&ctd.dir)))?;
    Ok(outcome)
}

#[test]
fn killing_any_process_at_any_phase_of_pod_start_ends_cleanly() -> Result<()> {
    require_vm!();
    let ctd = Containerd::start()?;
    let mut cases = vec![("boot", "shim")];
    for phase in ["agent_dial", "create_sandbox", "create_container"] {
        for victim in ["qemu-system", "virtiofsd", "vhost-device-vsock", "shim"] {
            cases.push((phase, victim));
        }
    }
    let kernel_vsock = std::path::Path::new("/dev/vhost-vsock").exists();
    let mut failures = Vec::new();
    for (phase, victim) in cases {
        if victim == "vhost-device-vsock" && kernel_vsock {
            continue; // kernel vsock: no such helper
        }
        match case(&ctd, phase, victim) {
            Ok(outcome) => eprintln!("{phase:>16} × {victim:<18} {outcome}"),
            Err(e) => failures.push(format!("{phase} × {victim}: {e:#}")),
        }
    }
    let scope = ctd.dir.clone();
    drop(ctd);
    let left = leaks::settle_and_check(&scope);
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(left.is_empty(), "left behind: {left:#?}");
    Ok(())
}
