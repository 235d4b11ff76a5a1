//! The pod's PID namespace, decided here as upstream's agent does.
//!
//! Kata's runtimes strip the pid entry from the spec (a host path means
//! nothing in the guest) and set `CreateContainerRequest.sandbox_pidns` when
//! the container shares the pod's PID namespace. The pod's namespace is the
//! first container's (the sandbox container under CRI): its init is PID 1
//! there and reaps orphans. Every other container gets a namespace of its
//! own. Whatever the spec says, no container ever runs in the VM's initial
//! PID namespace, where the agent lives and could be seen and signalled.
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;

use protocols::oci::{LinuxNamespace, Spec};

use crate::error::{Error, Result};

/// An open handle on the pod's PID namespace. Held open so that the path
/// handed to the helper cannot come to name another namespace when the
/// owner's pid is reused (a pid namespace whose init died cannot be entered
/// for good: fork there fails, the container's create fails cleanly).
#[derive(Debug)]
pub struct PodPidNs {
    file: File,
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
        Ok(PodPidNs { file })
    }

    /// A path the container helper (the agent's child, still in the agent's
    /// mount namespace when it opens it) reaches the namespace by.
    pub fn path(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
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
