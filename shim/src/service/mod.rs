//! containerd's Task service (`containerd.task.v2.Task` and `.v3.Task`,
//! same messages). One file per RPC family; this file holds the shared
//! state and the dispatch.

pub mod control;
pub mod create;
mod exec;
#[cfg(test)]
mod hostile_tests;
pub mod idle;
mod lifecycle;
#[cfg(test)]
mod load_tests;
mod query;
pub mod sandbox_api;
#[cfg(test)]
mod sandbox_api_tests;
#[cfg(test)]
mod sizing_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use hypervisor::Hypervisor;
use protocols::containerd::api;
use protocols::containerd::shim_async::Task;
use protocols::containerd::ttrpc::r#async::TtrpcContext;
use tokio::sync::Notify;

pub use crate::container::Container;
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::process::Process;
use crate::sandbox::{AgentDialer, Sandbox};
use crate::share::Mounter;

type TtrpcResult<T> = protocols::containerd::ttrpc::Result<T>;

/// Shared state of the daemon: one sandbox, its containers.
pub struct TaskService {
    /// containerd namespace (given to logging binaries).
    pub namespace: String,
    /// Where sandbox directories live (`persist::RUN_ROOT` in production).
    run_root: PathBuf,
    hypervisor: Arc<dyn Hypervisor>,
    dialer: Arc<dyn AgentDialer>,
    events: Arc<dyn EventSink>,
    mounter: Arc<dyn Mounter>,
    /// Serialises sandbox boot/teardown; `None` until the first Create.
    sandbox: Arc<tokio::sync::Mutex<Option<Arc<Sandbox>>>>,
    containers: Arc<Mutex<HashMap<String, Arc<Container>>>>,
    ooms: Arc<lifecycle::OomTracker>,
    /// Signalled when the daemon should exit (Shutdown with nothing left).
    pub exit: Arc<Notify>,
    /// How long the daemon waits for containerd after its VM died.
    vm_gone_linger: Duration,
    /// How long the guest gets to answer a signal, and to report the pod's
    /// exit after its SIGKILL, before the VM is stopped from the host.
    kill_timeouts: KillTimeouts,
    /// The pod created through the Sandbox API, if any.
    pod: sandbox_api::PodSlot,
    /// The host's cgroup hierarchies, when the VM is placed in the pod's
    /// cgroup (the daemon; tests on fakes leave their process where it is).
    host_cgroups: Option<Arc<crate::host_cgroup::Host>>,
}

/// See [`TaskService::with_kill_timeouts`].
#[derive(Debug, Clone, Copy)]
pub struct KillTimeouts {
    pub signal: Duration,
    pub pod_exit: Duration,
}

impl Default for KillTimeouts {
    fn default() -> Self {
        Self {
            signal: Duration::from_secs(5),
            pod_exit: Duration::from_secs(10),
        }
    }
}

/// After the VM died and every exit was published, containerd normally
/// deletes the tasks and sends Shutdown within milliseconds. If it never
/// does (containerd is gone too), the daemon exits anyway rather than
/// outlive its VM; containerd's `delete` action covers a daemon that exited.
pub const VM_GONE_LINGER: Duration = Duration::from_secs(30);

impl TaskService {
    pub fn new(
        namespace: &str,
        run_root: PathBuf,
        hypervisor: Arc<dyn Hypervisor>,
        dialer: Arc<dyn AgentDialer>,
        events: Arc<dyn EventSink>,
        mounter: Arc<dyn Mounter>,
    ) -> Self {
        Self {
            namespace: namespace.to_owned(),
            run_root,
            hypervisor,
            dialer,
            events,
            mounter,
            sandbox: Arc::new(tokio::sync::Mutex::new(None)),
            containers: Arc::new(Mutex::new(HashMap::new())),
            exit: Arc::new(Notify::new()),
            ooms: Arc::default(),
            vm_gone_linger: VM_GONE_LINGER,
            kill_timeouts: KillTimeouts::default(),
            pod: Default::default(),
            host_cgroups: None,
        }
    }

    /// Places each sandbox's VM in its host cgroup (the daemon does).
    pub fn with_host_cgroups(mut self, host: crate::host_cgroup::Host) -> Self {
        self.host_cgroups = Some(Arc::new(host));
        self
    }

    /// Where sandbox `id`'s VM goes on the host for `cgroups_path` (the
    /// sandbox container's), if the daemon places VMs at all.
    fn cgroup_target(
        &self,
        cfg: &crate::config::Config,
        cgroups_path: Option<&str>,
        id: &str,
    ) -> Result<Option<(&crate::host_cgroup::Host, PathBuf)>> {
        let Some(host) = self.host_cgroups.as_deref() else {
            return Ok(None);
        };
        Ok(
            crate::host_cgroup::target(cfg.sandbox_cgroup_only, cgroups_path, id)?
                .map(|rel| (host, rel)),
        )
    }

    /// Sets how long Kill waits on the guest (tests).
    pub fn with_kill_timeouts(mut self, t: KillTimeouts) -> Self {
        self.kill_timeouts = t;
        self
    }

    /// Sets how long the daemon outlives a dead VM without containerd (tests).
    pub fn with_vm_gone_linger(mut self, linger: Duration) -> Self {
        self.vm_gone_linger = linger;
        self
    }

    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        // A poisoned lock only means a panic elsewhere; the map is still consistent.
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("container {id:?} not found")))
    }

    /// The process `exec_id` of container `id` (init when empty).
    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Process>)> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        let p = c.execs().get(exec_id).cloned().ok_or_else(|| {
            Error::NotFound(format!("exec {exec_id:?} of container {id:?} not found"))
        })?;
        Ok((c, p))
    }

    async fn running_sandbox(&self) -> Option<Arc<Sandbox>> {
        self.sandbox.lock().await.clone()
    }

    /// The running sandbox, or FailedPrecondition when its VM is gone.
    async fn live_sandbox(&self) -> Result<Arc<Sandbox>> {
        self.running_sandbox()
            .await
            .ok_or_else(|| Error::FailedPrecondition("the sandbox VM is not running".into()))
    }

    fn sandbox_slot(&self) -> Arc<tokio::sync::Mutex<Option<Arc<Sandbox>>>> {
        self.sandbox.clone()
    }

    /// QEMU's pid stands for the container on the host: nothing else there runs it.
    fn task_pid(sandbox: &Sandbox) -> u32 {
        sandbox.vm.pids().first().copied().unwrap_or(0)
    }
}

fn unimplemented<T>(what: &str) -> TtrpcResult<T> {
    Err(Error::Unimplemented(format!("{what} is not implemented by this shim yet")).into())
}

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        Ok(self.do_create(req).await?)
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        Ok(self.do_start(req).await?)
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        Ok(self.do_delete(req).await?)
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.do_state(req).await?)
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        Ok(self.do_kill(req).await?)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        Ok(self.do_wait(req).await?)
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(self.do_connect(req).await?)
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.do_shutdown(req).await?)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        Ok(self.do_pids(req).await?)
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Ok(self.do_pause(req).await?)
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.do_resume(req).await?)
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        unimplemented("Checkpoint")
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.do_exec(req).await?)
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.do_resize_pty(req).await?)
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.do_close_io(req).await?)
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Ok(self.do_update(req).await?)
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        Ok(self.do_stats(req).await?)
    }
}
