//! The pod's PID namespace, decided here as upstream's agent does.
//!
//! Kata's runtimes strip the pid entry from the spec (a host path means
//! nothing in the guest) and set `CreateContainerRequest.sandbox_pidns` when
//! the container shares the pod's PID namespace. The pod's namespace is the
//! first container's (the sandbox container under CRI): its init is PID 1
//! there and reaps orphans. Every other container gets a namespace of its
//! own. Whatever the spec says, no container ever runs in the VM's initial
//! PID namespace, where the agent lives and could be seen and signalled.
//!
//! A pod without a sandbox container (containerd's Sandbox API, where no
//! pause container runs) asks for a shared namespace at CreateSandbox
//! (`sandbox_pidns`): the agent then starts a holder, a tiny init that owns
//! the namespace and reaps its orphans for the pod's lifetime, as upstream's
//! agent does with its infra process.
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use protocols::oci::{LinuxNamespace, Spec};

use crate::error::{Error, Result};
use crate::reaper::Reaper;

/// argv[1] of the agent binary when it runs as a pod namespace holder.
pub const HOLDER_ARG: &str = "__kata-pidns-holder";

/// An open handle on the pod's PID namespace. Held open so that the path
/// handed to the helper cannot come to name another namespace when the
/// owner's pid is reused (a pid namespace whose init died cannot be entered
/// for good: fork there fails, the container's create fails cleanly).
#[derive(Debug)]
pub struct PodPidNs {
    file: File,
    /// The holder's init, killed (and with it the namespace) on drop.
    holder: Option<OwnedFd>,
}

impl Drop for PodPidNs {
    fn drop(&mut self) {
        if let Some(init) = &self.holder {
            if let Err(e) = crate::process::pidfd_signal(init, Signal::SIGKILL) {
                tracing::warn!(error = %e, "killing the pod pid namespace holder");
            }
        }
    }
}

impl PodPidNs {
    /// The PID namespace of process `pid` (the pod's first container).
    /// Refuses the agent's own namespace.
    pub fn of(pid: i32) -> Result<PodPidNs> {
        let path = format!("/proc/{pid}/ns/pid");
        let file = File::open(&path).map_err(|e| Error::io(path.clone(), e))?;
        let ours = std::fs::metadata("/proc/self/ns/pid").map_err(|e| Error::io("own pidns", e))?;
        let theirs = file.metadata().map_err(|e| Error::io(path, e))?;
        if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
            return Err(Error::FailedPrecondition(format!(
                "process {pid} runs in the agent's pid namespace"
            )));
        }
        Ok(PodPidNs { file, holder: None })
    }

    /// A new namespace owned by a holder process (see the module doc).
    pub async fn hold(reaper: &Reaper) -> Result<PodPidNs> {
        let mut out = None;
        let (pid, _exit) = reaper
            .spawn(|| {
                let mut child = Command::new("/proc/self/exe")
                    .arg(HOLDER_ARG)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .spawn()?;
                out = child.stdout.take();
                Ok(child.id() as i32)
            })
            .map_err(|e| Error::io("starting the pod pid namespace holder", e))?;
        let out = out.ok_or_else(|| Error::Internal("holder without stdout".into()))?;
        // One short line, written right after the holder's fork.
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            BufReader::new(out).read_line(&mut line).map(|_| line)
        })
        .await
        .map_err(|e| Error::Internal(format!("holder reader: {e}")))?
        .map_err(|e| Error::io("reading the holder's init pid", e))?;
        let init: i32 = line.trim().parse().map_err(|_| {
            Error::Internal(format!("pid namespace holder {pid} answered {line:?}"))
        })?;
        // The pidfd first: from then on the kill cannot reach a recycled pid.
        let pidfd = crate::process::pidfd_open(init)?;
        let mut ns = PodPidNs::of(init)?;
        ns.holder = Some(pidfd);
        tracing::info!(holder = pid, init, "pod pid namespace held");
        Ok(ns)
    }

    /// A path the container helper (the agent's child, still in the agent's
    /// mount namespace when it opens it) reaches the namespace by.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }
}

/// The holder (agent binary with [`HOLDER_ARG`]): unshares a PID namespace,
/// forks its init, prints the init's pid and stays until the init dies.
pub fn holder_main() -> ! {
    match run_holder() {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            eprintln!("pid namespace holder: {e}");
            std::process::exit(1)
        }
    }
}

fn run_holder() -> nix::Result<()> {
    use nix::sched::{unshare, CloneFlags};
    use nix::unistd::{fork, ForkResult};
    // Blocked before the fork, so the init's sigwait misses no SIGCHLD.
    let mut chld = SigSet::empty();
    chld.add(Signal::SIGCHLD);
    chld.thread_block()?;
    unshare(CloneFlags::CLONE_NEWPID)?;
    // SAFETY: this process is single-threaded (a fresh exec, no runtime).
    match unsafe { fork() }? {
        ForkResult::Child => reap_forever(&chld),
        ForkResult::Parent { child } => {
            println!("{child}");
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..)) => return Ok(()),
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// PID 1 of the pod's namespace: reaps whatever is reparented to it.
fn reap_forever(chld: &SigSet) -> ! {
    // Named for `ps` in the pod's containers (else "exe").
    let _ = nix::sys::prctl::set_name(c"pod-pidns-init");
    loop {
        while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            if status == WaitStatus::StillAlive {
                break;
            }
        }
        let _ = chld.wait();
    }
}

/// Replaces the spec's pid entries: join `pod` when the container shares
/// the pod's namespace, else a new namespace.
pub fn assign(spec: &mut Spec, share: bool, pod: Option<&PodPidNs>) -> Result<()> {
    let path = match (share, pod) {
        (false, _) => String::new(),
        (true, Some(ns)) => ns.path(),
        (true, None) => {
            return Err(Error::FailedPrecondition(
                "the container shares the pod's pid namespace, but the pod has none yet \
                 (no container was created before it)"
                    .into(),
            ))
        }
    };
    let linux = spec.Linux.mut_or_insert_default();
    linux
        .Namespaces
        .retain(|ns| !matches!(ns.Type.as_str(), "pid"));
    linux.Namespaces.push(LinuxNamespace {
        Type: "pid".into(),
        Path: path,
        ..Default::default()
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ns: &[(&str, &str)]) -> Spec {
        let mut s = Spec::default();
        s.Linux.mut_or_insert_default().Namespaces = ns
            .iter()
            .map(|(t, p)| LinuxNamespace {
                Type: t.to_string(),
                Path: p.to_string(),
                ..Default::default()
            })
            .collect();
        s
    }

    fn pid_entries(s: &Spec) -> Vec<String> {
        s.Linux
            .Namespaces
            .iter()
            .filter(|n| n.Type == "pid")
            .map(|n| n.Path.clone())
            .collect()
    }

    #[test]
    fn a_container_of_its_own_gets_a_new_namespace_whatever_the_spec_says() {
        // A host path (or the VM's own /proc/1/ns/pid) is dropped.
        let mut s = spec(&[("pid", "/proc/1/ns/pid"), ("mount", "")]);
        assign(&mut s, false, None).expect("assigned");
        assert_eq!(pid_entries(&s), vec![String::new()]);
        assert!(s.Linux.Namespaces.iter().any(|n| n.Type == "mount"));
        // No pid entry at all (host PID under CRI): still a new one.
        let mut s = spec(&[("mount", "")]);
        assign(&mut s, false, None).expect("assigned");
        assert_eq!(pid_entries(&s), vec![String::new()]);
    }

    #[test]
    fn sharing_joins_the_pods_namespace_or_fails() {
        let mut s = spec(&[("pid", "")]);
        let e = assign(&mut s, true, None).expect_err("no pod namespace yet");
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
        // A child in a new pid namespace stands in for the pod's first container.
        let mut child = std::process::Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "30"])
            .spawn();
        let Ok(child) = child.as_mut() else {
            eprintln!("skipping: unshare not available");
            return;
        };
        // `unshare --fork`: the sleep is its child, in the new namespace.
        let mut ns = None;
        for _ in 0..100 {
            let kids = std::fs::read_to_string(format!(
                "/proc/{}/task/{}/children",
                child.id(),
                child.id()
            ))
            .unwrap_or_default();
            if let Some(pid) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                ns = Some(PodPidNs::of(pid));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        let Some(Ok(ns)) = ns else {
            eprintln!("skipping: no pid namespace could be created here: {ns:?}");
            return;
        };
        assign(&mut s, true, Some(&ns)).expect("assigned");
        assert_eq!(pid_entries(&s), vec![ns.path()]);
        assert!(std::path::Path::new(&ns.path()).exists());
    }

    #[test]
    fn the_agents_own_namespace_is_refused() {
        let e = PodPidNs::of(std::process::id() as i32).expect_err("refused");
        assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");
    }
}
