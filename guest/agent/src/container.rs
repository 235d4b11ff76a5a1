//! A container: its spec, init process, exec'd processes, cgroup and the
//! storages mounted for it.
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use protocols::oci::{LinuxNamespace, Spec};

use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::mounts::Mounted;
use crate::process::{Process, SpawnRequest};
use crate::reaper::Reaper;
use crate::runtime::namespace_flag;
use crate::sync::{MODE_CREATE, MODE_EXEC};

/// How long an exited, waited-for exec stays for its output to be read.
const EXEC_LINGER: Duration = Duration::from_secs(60);

/// Namespaces an exec joins (from the init process's /proc/<pid>/ns).
const EXEC_NAMESPACES: [(&str, &str); 5] = [
    ("pid", "pid"),
    ("ipc", "ipc"),
    ("uts", "uts"),
    ("cgroup", "cgroup"),
    ("mount", "mnt"),
];

pub struct Container {
    pub id: String,
    spec: Spec,
    pub init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    cgroup: Option<Cgroup>,
    storages: Vec<Mounted>,
}

/// Rejects what the runtime cannot run (INVALID_ARGUMENT).
pub fn validate_process(p: Option<&protocols::oci::Process>) -> Result<()> {
    let p = p.ok_or_else(|| Error::InvalidArgument("spec has no process".into()))?;
    if p.Args.is_empty() {
        return Err(Error::InvalidArgument("process has no args".into()));
    }
    if !p.Cwd.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "process cwd {:?} is not absolute",
            p.Cwd
        )));
    }
    Ok(())
}

pub fn validate_spec(spec: &Spec) -> Result<()> {
    validate_process(spec.Process.as_ref())?;
    let root = spec
        .Root
        .as_ref()
        .map(|r| r.Path.as_str())
        .unwrap_or_default();
    if !root.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "root path {root:?} is not absolute"
        )));
    }
    if !Path::new(root).is_dir() {
        return Err(Error::InvalidArgument(format!(
            "root path {root} is not a directory in the guest"
        )));
    }
    for ns in spec
        .Linux
        .as_ref()
        .map(|l| l.Namespaces.as_slice())
        .unwrap_or_default()
    {
        if namespace_flag(&ns.Type).is_none() {
            return Err(Error::InvalidArgument(format!(
                "unknown namespace type {:?}",
                ns.Type
            )));
        }
        if matches!(ns.Type.as_str(), "mount" | "mnt") && !ns.Path.is_empty() {
            return Err(Error::InvalidArgument(
                "joining a mount namespace is not supported: the container needs its own".into(),
            ));
        }
        let joins = !matches!(ns.Type.as_str(), "network" | "net" | "user");
        if joins && !ns.Path.is_empty() && !Path::new(&ns.Path).exists() {
            return Err(Error::InvalidArgument(format!(
                "{} namespace path {} does not exist in the guest",
                ns.Type, ns.Path
            )));
        }
    }
    if let Some(profile) = spec.Linux.as_ref().and_then(|l| l.Seccomp.as_ref()) {
        // Compiled here (and again in the helper) so a bad profile is the
        // caller's INVALID_ARGUMENT, not a failed start.
        crate::runtime::seccomp::compile(profile, &mut |w| tracing::warn!("{w}"))
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    }
    Ok(())
}

impl Container {
    /// Creates the container: its init process is set up and waits for `start`.
    pub async fn create(
        id: &str,
        init_exec_id: &str,
        spec: Spec,
        storages: Vec<Mounted>,
        reaper: &Reaper,
    ) -> Result<Container> {
        let linux = spec.Linux.as_ref();
        let path = crate::cgroups::cgroup_path(
            linux.map(|l| l.CgroupsPath.as_str()).unwrap_or_default(),
            id,
        );
        let resources = linux.and_then(|l| l.Resources.clone().into_option());
        let created = crate::blocking::run(move || Cgroup::create(path, resources.as_ref())).await;
        let cgroup = match created {
            Ok(cg) => Some(cg),
            Err(e) => {
                for m in &storages {
                    m.unmount();
                }
                return Err(e);
            }
        };
        let req = SpawnRequest {
            mode: MODE_CREATE,
            init_pid: 0,
            spec: spec.clone(),
            cgroup: cgroup.clone(),
            log_id: id.into(),
        };
        match Process::spawn(init_exec_id.to_string(), req, reaper).await {
            Ok(init) => Ok(Container {
                id: id.to_string(),
                spec,
                init: Arc::new(init),
                execs: Mutex::default(),
                cgroup,
                storages,
            }),
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove().await;
                }
                for m in &storages {
                    m.unmount();
                }
                Err(e)
            }
        }
    }

    pub async fn start(&self) -> Result<()> {
        if self.init.started() {
            return Err(Error::FailedPrecondition(format!(
                "container {} already started",
                self.id
            )));
        }
        self.init.start().await
    }

    /// Runs a new process in the container's namespaces and cgroup.
    pub async fn exec(
        &self,
        exec_id: &str,
        process: protocols::oci::Process,
        reaper: &Reaper,
    ) -> Result<()> {
        validate_process(Some(&process))?;
        if !self.init.started() || self.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        if self.is_init(exec_id) || self.lock_execs().contains_key(exec_id) {
            return Err(Error::AlreadyExists(format!(
                "exec {exec_id:?} in container {}",
                self.id
            )));
        }
        let mut spec = self.spec.clone();
        spec.Process = Some(process).into();
        spec.Mounts.clear();
        let linux = spec.Linux.mut_or_insert_default();
        linux.Namespaces = EXEC_NAMESPACES
            .iter()
            .map(|(kind, file)| LinuxNamespace {
                Type: kind.to_string(),
                Path: format!("/proc/{}/ns/{file}", self.init.pid),
                ..Default::default()
            })
            .collect();
        let req = SpawnRequest {
            mode: MODE_EXEC,
            init_pid: self.init.pid as u32,
            spec,
            cgroup: self.cgroup.clone(),
            log_id: format!("{}/{exec_id}", self.id),
        };
        let p = Arc::new(Process::spawn(exec_id.to_string(), req, reaper).await?);
        {
            let mut execs = self.lock_execs();
            if execs.contains_key(exec_id) {
                let _ = p.signal(Signal::SIGKILL);
                return Err(Error::AlreadyExists(format!(
                    "exec {exec_id:?} in container {}",
                    self.id
                )));
            }
            execs.insert(exec_id.to_string(), p.clone());
        }
        if let Err(e) = p.start().await {
            self.lock_execs().remove(exec_id);
            return Err(e);
        }
        Ok(())
    }

    fn lock_execs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Process>>> {
        self.execs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops an exited exec (its pipes and bookkeeping) once its output was
    /// read to the end, or after `EXEC_LINGER` if nobody reads it.
    pub fn forget_exec_when_drained(self: &Arc<Self>, exec_id: &str) {
        if self.is_init(exec_id) {
            return;
        }
        let Some(p) = self.lock_execs().get(exec_id).cloned() else {
            return;
        };
        let (c, exec_id) = (self.clone(), exec_id.to_string());
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + EXEC_LINGER;
            while !p.drained() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut execs = c.lock_execs();
            if execs.get(&exec_id).is_some_and(|q| Arc::ptr_eq(q, &p)) {
                execs.remove(&exec_id);
                tracing::debug!(container = %c.id, exec = %exec_id, "exec forgotten");
            }
        });
    }

    /// Empty, the container id or the exec id CreateContainer carried: the
    /// init process (upstream semantics).
    fn is_init(&self, exec_id: &str) -> bool {
        exec_id.is_empty() || exec_id == self.id || exec_id == self.init.exec_id
    }

    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>> {
        if self.is_init(exec_id) {
            return Ok(self.init.clone());
        }
        self.lock_execs()
            .get(exec_id)
            .cloned()
            .ok_or_else(|| Error::ProcessNotFound {
                container_id: self.id.clone(),
                exec_id: exec_id.to_string(),
            })
    }

    fn all_processes(&self) -> Vec<Arc<Process>> {
        let mut all = vec![self.init.clone()];
        all.extend(self.lock_execs().values().cloned());
        all
    }

    /// Empty exec id: every process of the container; else that process.
    pub fn signal(&self, exec_id: &str, sig: Signal) -> Result<()> {
        if !exec_id.is_empty() {
            return self.process(exec_id)?.signal(sig);
        }
        for p in self.all_processes() {
            p.signal(sig)?;
        }
        if sig == Signal::SIGKILL {
            if let Some(cg) = &self.cgroup {
                cg.kill();
            }
        }
        Ok(())
    }

    fn cgroup(&self) -> Result<&Cgroup> {
        self.cgroup.as_ref().ok_or_else(|| {
            Error::FailedPrecondition(format!("container {} has no cgroup", self.id))
        })
    }

    pub async fn pause(&self, frozen: bool) -> Result<()> {
        if frozen && (!self.init.started() || self.init.exited().is_some()) {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                self.id
            )));
        }
        self.cgroup()?.freeze(frozen).await
    }

    pub async fn update(&self, resources: protocols::oci::LinuxResources) -> Result<()> {
        let cgroup = self.cgroup()?.clone();
        crate::blocking::run(move || cgroup.apply(&resources)).await
    }

    pub async fn stats(&self) -> Result<protocols::agent::CgroupStats> {
        let cgroup = self.cgroup()?.clone();
        crate::blocking::run(move || Ok(cgroup.stats())).await
    }

    pub async fn pids(&self) -> Result<Vec<i32>> {
        let cgroup = self.cgroup()?.clone();
        crate::blocking::run(move || Ok(cgroup.pids())).await
    }

    pub fn oom_kills(&self) -> u64 {
        self.cgroup.as_ref().map(Cgroup::oom_kills).unwrap_or(0)
    }

    /// Kills what remains, waits for it (up to `timeout`, None = no limit),
    /// removes the cgroup and unmounts the container's storages.
    pub async fn destroy(&self, timeout: Option<Duration>) -> Result<()> {
        self.signal("", Signal::SIGKILL)?;
        let wait_all = async {
            for p in self.all_processes() {
                p.wait().await;
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, wait_all).await.map_err(|_| {
                Error::Timeout(format!("processes of container {} did not exit", self.id))
            })?,
            None => wait_all.await,
        }
        if let Some(cg) = &self.cgroup {
            cg.remove().await;
        }
        for m in &self.storages {
            m.unmount();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::oci;

    fn spec(cwd: &str, args: &[&str], ns: &[(&str, &str)]) -> Spec {
        Spec {
            Process: Some(oci::Process {
                Args: args.iter().map(|s| s.to_string()).collect(),
                Cwd: cwd.into(),
                ..Default::default()
            })
            .into(),
            Root: Some(oci::Root {
                Path: "/".into(),
                ..Default::default()
            })
            .into(),
            Linux: Some(oci::Linux {
                Namespaces: ns
                    .iter()
                    .map(|(t, p)| LinuxNamespace {
                        Type: t.to_string(),
                        Path: p.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        }
    }

    fn invalid(s: &Spec) -> bool {
        matches!(validate_spec(s), Err(Error::InvalidArgument(_)))
    }

    #[test]
    fn specs_the_runtime_cannot_run_are_invalid_arguments() {
        assert!(validate_spec(&spec(
            "/",
            &["sh"],
            &[("pid", ""), ("network", "/host/netns")]
        ))
        .is_ok());
        assert!(invalid(&spec("relative", &["sh"], &[])));
        assert!(invalid(&spec("", &["sh"], &[])));
        assert!(invalid(&spec("/", &[], &[])));
        assert!(invalid(&spec("/", &["sh"], &[("time", "")])));
        assert!(invalid(&spec("/", &["sh"], &[("mount", "/proc/1/ns/mnt")])));
        assert!(invalid(&spec("/", &["sh"], &[("ipc", "/no/such/ns")])));
        let mut no_process = spec("/", &["sh"], &[]);
        no_process.Process.clear();
        assert!(invalid(&no_process));
        let mut no_root = spec("/", &["sh"], &[]);
        no_root.Root.clear();
        assert!(invalid(&no_root));
        assert_eq!(
            Error::ContainerNotFound("x".into()).code(),
            ttrpc::Code::NOT_FOUND
        );
        assert_eq!(
            Error::AlreadyExists("x".into()).code(),
            ttrpc::Code::ALREADY_EXISTS
        );
        assert_eq!(Error::Eof.to_string(), "EOF");
    }
}
