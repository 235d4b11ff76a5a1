//! The sandbox: every container of the VM, the sandbox storages, and the
//! operations the RPCs map onto.
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::signal::Signal;
use protocols::agent::{CreateContainerRequest, CreateSandboxRequest};

use crate::container::{validate_spec, Container};
use crate::error::{Error, Result};
use crate::mounts::{mount_storage, Mounted};
use crate::pidns::{self, PodPidNs};
use crate::process::Process;
use crate::reaper::Reaper;

/// How long DestroySandbox waits for each container's processes to die.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often GetOOMEvent looks at the containers' memory.events.
const OOM_POLL: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    containers: HashMap<String, Arc<Container>>,
    /// Ids being created (so a duplicate is refused while the first is in flight).
    creating: HashSet<String>,
    storages: Vec<Mounted>,
    created: bool,
    /// OOM kills already reported, per container.
    oom_seen: HashMap<String, u64>,
    /// The pod's PID namespace: the first container's (see `pidns`).
    pidns: Option<Arc<PodPidNs>>,
}

pub struct Sandbox {
    reaper: Reaper,
    state: Mutex<State>,
}

fn unmount_all(mounts: &[Mounted]) {
    for m in mounts.iter().rev() {
        m.unmount();
    }
}

/// Mounts `storages` in order (off the async runtime: a mount can wait on
/// the host's share or on kernel modules); none stays mounted on error.
async fn mount_all(storages: &[protocols::agent::Storage]) -> Result<Vec<Mounted>> {
    let storages = storages.to_vec();
    crate::blocking::run(move || {
        let mut done = Vec::new();
        for s in &storages {
            match mount_storage(s) {
                Ok(Some(m)) => done.push(m),
                Ok(None) => {}
                Err(e) => {
                    unmount_all(&done);
                    return Err(e);
                }
            }
        }
        Ok(done)
    })
    .await
}

impl Sandbox {
    pub fn new(reaper: Reaper) -> Sandbox {
        Sandbox {
            reaper,
            state: Mutex::default(),
        }
    }

    pub fn reaper(&self) -> Reaper {
        self.reaper.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub async fn create_sandbox(&self, req: &CreateSandboxRequest) -> Result<()> {
        if self.lock().created {
            return Err(Error::FailedPrecondition("sandbox already created".into()));
        }
        if !req.dns.is_empty() || !req.guest_hook_path.is_empty() {
            tracing::warn!(
                dns = req.dns.len(),
                hooks = %req.guest_hook_path,
                "guest DNS and guest hooks are not supported: ignored"
            );
        }
        // A shared namespace asked for at CreateSandbox has no sandbox
        // container to own it (containerd's Sandbox API): a holder does.
        if req.sandbox_pidns {
            let ns = PodPidNs::hold(&self.reaper).await?;
            self.lock().pidns = Some(Arc::new(ns));
        }
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname).map_err(|e| Error::sys("sethostname", e))?;
        }
        let modules = req.kernel_modules.clone();
        crate::blocking::run(move || {
            for m in &modules {
                crate::init::load_module_by_name(&m.name, &m.parameters.join(" "));
            }
            Ok(())
        })
        .await?;
        let mounted = mount_all(&req.storages).await?;
        let mut st = self.lock();
        st.storages.extend(mounted);
        st.created = true;
        tracing::info!(sandbox = %req.sandbox_id, hostname = %req.hostname, "sandbox created");
        Ok(())
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.lock()
            .containers
            .get(id)
            .cloned()
            .ok_or_else(|| Error::ContainerNotFound(id.to_string()))
    }

    pub fn process(&self, container_id: &str, exec_id: &str) -> Result<Arc<Process>> {
        self.container(container_id)?.process(exec_id)
    }

    pub async fn create_container(&self, req: CreateContainerRequest) -> Result<()> {
        let id = req.container_id.clone();
        if id.is_empty() || id.contains('/') {
            return Err(Error::InvalidArgument(format!("container id {id:?}")));
        }
        if !req.devices.is_empty() {
            tracing::warn!(container = %id, devices = req.devices.len(), "devices are not supported: ignored");
        }
        let mut spec = req
            .OCI
            .into_option()
            .ok_or_else(|| Error::InvalidArgument("no OCI spec".into()))?;
        let first = {
            let mut st = self.lock();
            if st.containers.contains_key(&id) || !st.creating.insert(id.clone()) {
                return Err(Error::AlreadyExists(format!("container {id}")));
            }
            let first = st.containers.is_empty() && st.pidns.is_none();
            if let Err(e) = pidns::assign(&mut spec, req.sandbox_pidns, st.pidns.as_deref()) {
                st.creating.remove(&id);
                return Err(e);
            }
            first
        };
        tracing::info!(container = %id, sandbox_pidns = req.sandbox_pidns, "pid namespace assigned");
        let result = async {
            // Storages first: the rootfs may live on one of them.
            let mounted = mount_all(&req.storages).await?;
            if let Err(e) = validate_spec(&spec) {
                unmount_all(&mounted);
                return Err(e);
            }
            let init_exec_id = if req.exec_id.is_empty() {
                &id
            } else {
                &req.exec_id
            };
            Container::create(&id, init_exec_id, spec, mounted, &self.reaper).await
        }
        .await;
        // The pod's PID namespace is the first container's (its init is
        // alive, waiting for start, so its pid cannot have been reused).
        let pod_ns = match (&result, first) {
            (Ok(c), true) => match PodPidNs::of(c.init.pid) {
                Ok(ns) => Some(Arc::new(ns)),
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "no pod pid namespace");
                    None
                }
            },
            _ => None,
        };
        let mut st = self.lock();
        st.creating.remove(&id);
        let c = result?;
        if st.pidns.is_none() {
            st.pidns = pod_ns;
        }
        st.containers.insert(id.clone(), Arc::new(c));
        tracing::info!(container = %id, "container created");
        Ok(())
    }

    pub async fn remove_container(&self, id: &str, timeout: Option<Duration>) -> Result<()> {
        let c = self.container(id)?;
        c.destroy(timeout).await?;
        let mut st = self.lock();
        st.containers.remove(id);
        st.oom_seen.remove(id);
        tracing::info!(container = %id, "container removed");
        Ok(())
    }

    pub fn signal(&self, container_id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| Error::InvalidArgument(format!("signal {signal}")))?;
        self.container(container_id)?.signal(exec_id, sig)
    }

    /// Blocks until some container's cgroup records a new OOM kill; returns its id.
    pub async fn next_oom(&self) -> String {
        loop {
            let containers: Vec<_> = self.lock().containers.values().cloned().collect();
            for c in containers {
                let kills = c.oom_kills();
                let mut st = self.lock();
                let seen = st.oom_seen.entry(c.id.clone()).or_insert(0);
                if kills > *seen {
                    *seen = kills;
                    return c.id.clone();
                }
            }
            tokio::time::sleep(OOM_POLL).await;
        }
    }

    /// Kills every container and unmounts the sandbox storages.
    pub async fn destroy(&self) {
        let containers: Vec<_> = self.lock().containers.drain().map(|(_, c)| c).collect();
        for c in containers {
            if let Err(e) = c.destroy(Some(DESTROY_TIMEOUT)).await {
                tracing::warn!(container = %c.id, error = %e, "destroying container");
            }
        }
        // Drops the pod's namespace: a holder's init is killed.
        self.lock().pidns = None;
        let storages = std::mem::take(&mut self.lock().storages);
        let t0 = std::time::Instant::now();
        unmount_all(&storages);
        let unmount_ms = t0.elapsed().as_millis() as u64;
        nix::unistd::sync();
        let sync_ms = t0.elapsed().as_millis() as u64 - unmount_ms;
        tracing::debug!(unmount_ms, sync_ms, "sandbox storages released");
    }
}
