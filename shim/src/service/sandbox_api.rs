//! containerd's Sandbox API (`containerd.runtime.sandbox.v1.Sandbox`),
//! served by the same per-pod daemon as the Task API. With `sandboxer =
//! "shim"` containerd 2.x's CRI creates the pod here (no pause container):
//! CreateSandbox records the pod, StartSandbox boots its VM, and the app
//! containers then arrive over the Task API into that VM. The pod's VM
//! lives until StopSandbox (or its death), whatever its containers do; the
//! daemon exits after ShutdownSandbox.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use protocols::containerd::protobuf::well_known_types::any::Any;
use protocols::containerd::protobuf::well_known_types::timestamp::Timestamp;
use protocols::containerd::protobuf::MessageField;
use protocols::containerd::sandbox_api as sapi;
use protocols::containerd::sandbox_async::Sandbox as SandboxApi;
use protocols::containerd::ttrpc::r#async::TtrpcContext;
use tokio::sync::watch;
use tracing::Instrument;

use super::TaskService;
use crate::error::{Error, Result};
use crate::sandbox::{BootParams, Sandbox};

type TtrpcResult<T> = protocols::containerd::ttrpc::Result<T>;

/// Exit status of a pod whose VM died (as if its pause process were SIGKILLed).
const VM_DIED_STATUS: u32 = 128 + 9;
/// StopSandbox's bound when containerd gives none.
const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// CRI reads these state names (`runtime.v1.PodSandboxState`).
pub const STATE_READY: &str = "SANDBOX_READY";
pub const STATE_NOTREADY: &str = "SANDBOX_NOTREADY";

/// How a pod ended.
#[derive(Debug, Clone, PartialEq)]
pub struct PodExit {
    pub status: u32,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Created,
    Running {
        pid: u32,
        created_at: Timestamp,
    },
    Stopped {
        pid: u32,
        created_at: Option<Timestamp>,
    },
}

/// What CreateSandbox was told, used by StartSandbox.
#[derive(Debug, Clone, Default)]
struct PodParams {
    netns: Option<PathBuf>,
    annotations: HashMap<String, String>,
    config_path: Option<String>,
    hostname: String,
    /// The sandbox's cgroupsPath, from the pod's cgroup parent.
    cgroups_path: Option<String>,
}

/// A pod created through the Sandbox API.
pub struct Pod {
    pub id: String,
    params: PodParams,
    phase: Mutex<Phase>,
    exit: watch::Sender<Option<PodExit>>,
    /// Set before StopSandbox stops the VM: its exit then is no death.
    stopping: AtomicBool,
}

impl Pod {
    fn phase(&self) -> std::sync::MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the pod's end once; later calls keep the first exit.
    fn mark_stopped(&self, status: u32) {
        let mut phase = self.phase();
        let (pid, created_at) = match &*phase {
            Phase::Stopped { .. } => return,
            Phase::Created => (0, None),
            Phase::Running { pid, created_at } => (*pid, Some(created_at.clone())),
        };
        *phase = Phase::Stopped { pid, created_at };
        drop(phase);
        self.exit.send_replace(Some(PodExit { status, at: now() }));
        tracing::info!(sandbox = %self.id, status, "pod stopped");
    }
}

/// The daemon's pod slot (at most one pod per daemon).
#[derive(Default)]
pub struct PodSlot(Mutex<Option<Arc<Pod>>>);

impl PodSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Pod>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self) -> Option<Arc<Pod>> {
        self.lock().clone()
    }
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// `hostname` (field 2) of CRI's `runtime.v1.PodSandboxConfig`, which
/// containerd passes as CreateSandbox's options.
pub(super) fn hostname_option(options: Option<&Any>) -> Option<String> {
    let any = options?;
    if !any.type_url.ends_with("runtime.v1.PodSandboxConfig") {
        return None;
    }
    let bytes = length_delimited(&any.value, 2)?;
    String::from_utf8(bytes).ok()
}

/// `linux.cgroup_parent` (fields 8, 1) of the `PodSandboxConfig` options.
pub(super) fn cgroup_parent_option(options: Option<&Any>) -> Option<String> {
    let any = options?;
    if !any.type_url.ends_with("runtime.v1.PodSandboxConfig") {
        return None;
    }
    let linux = length_delimited(&any.value, 8)?;
    String::from_utf8(length_delimited(&linux, 1)?).ok()
}

/// The last length-delimited `field` of protobuf message `bytes`.
fn length_delimited(bytes: &[u8], field: u32) -> Option<Vec<u8>> {
    let mut input = protocols::protobuf::CodedInputStream::from_bytes(bytes);
    let mut found = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (f, wire) = (tag >> 3, tag & 7);
        if f == field && wire == 2 {
            found = Some(input.read_bytes().ok()?);
            continue;
        }
        input
            .skip_field(protocols::protobuf::rt::WireType::new(wire)?)
            .ok()?;
    }
    found
}

/// The sandbox's cgroupsPath as containerd's CRI derives it from the pod's
/// cgroup parent: systemd's form under a `.slice`, else a path.
pub(super) fn sandbox_cgroups_path(parent: &str, id: &str) -> String {
    let base = parent
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    if base.ends_with(".slice") {
        format!("{base}:cri-containerd:{id}")
    } else {
        format!("{}/{id}", parent.trim_end_matches('/'))
    }
}

impl TaskService {
    /// The pod named `id`, or NotFound.
    fn pod(&self, id: &str) -> Result<Arc<Pod>> {
        match self.pod.get() {
            Some(p) if p.id == id => Ok(p),
            _ => Err(Error::NotFound(format!("sandbox {id:?} not found"))),
        }
    }

    /// Whether a Sandbox API pod owns the VM (so its last container's
    /// Delete must not stop it).
    pub(super) fn pod_owns_vm(&self) -> bool {
        self.pod.get().is_some()
    }

    pub(super) async fn do_create_sandbox(
        &self,
        req: sapi::CreateSandboxRequest,
    ) -> Result<sapi::CreateSandboxResponse> {
        let id = req.sandbox_id.clone();
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            return Err(Error::InvalidArgument(format!("invalid sandbox id {id:?}")));
        }
        let mut slot = self.pod.lock();
        if let Some(p) = slot.as_ref() {
            return Err(Error::AlreadyExists(format!(
                "this shim already serves sandbox {:?}",
                p.id
            )));
        }
        if self.sandbox.try_lock().map(|s| s.is_some()).unwrap_or(true) {
            return Err(Error::FailedPrecondition(
                "a task-created sandbox already runs in this shim".into(),
            ));
        }
        let params = PodParams {
            netns: (!req.netns_path.is_empty()).then(|| PathBuf::from(&req.netns_path)),
            annotations: req.annotations.clone(),
            config_path: super::create::config_path_option(req.options.as_ref()),
            hostname: hostname_option(req.options.as_ref()).unwrap_or_default(),
            cgroups_path: cgroup_parent_option(req.options.as_ref())
                .filter(|p| !p.is_empty())
                .map(|p| sandbox_cgroups_path(&p, &id)),
        };
        tracing::info!(sandbox = %id, netns = ?params.netns, "sandbox created");
        *slot = Some(Arc::new(Pod {
            id,
            params,
            phase: Mutex::new(Phase::Created),
            exit: watch::channel(None).0,
            stopping: AtomicBool::new(false),
        }));
        Ok(sapi::CreateSandboxResponse::default())
    }

    pub(super) async fn do_start_sandbox(
        &self,
        req: sapi::StartSandboxRequest,
    ) -> Result<sapi::StartSandboxResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        match &*pod.phase() {
            Phase::Created => {}
            Phase::Running { pid, created_at } => {
                return Ok(sapi::StartSandboxResponse {
                    pid: *pid,
                    created_at: MessageField::some(created_at.clone()),
                    ..Default::default()
                })
            }
            Phase::Stopped { .. } => {
                return Err(Error::FailedPrecondition(format!(
                    "sandbox {:?} was stopped",
                    pod.id
                )))
            }
        }
        let mut guard = self.sandbox.lock().await;
        if guard.is_some() {
            return Err(Error::FailedPrecondition(
                "a VM already runs in this shim".into(),
            ));
        }
        let t = std::time::Instant::now();
        let cfg = super::create::read_config(pod.params.config_path.clone())
            .await?
            .with_annotations(&pod.params.annotations)?;
        crate::sandbox::phase(&pod.id, "config", t);
        let cgroup = self.cgroup_target(&cfg, pod.params.cgroups_path.as_deref(), &pod.id)?;
        let span = tracing::info_span!("sandbox_boot", sandbox = %pod.id);
        let sb = Arc::new(
            Sandbox::boot(
                &pod.id,
                BootParams {
                    hostname: &pod.params.hostname,
                    netns: pod.params.netns.as_deref(),
                    pod_pidns: true,
                    cgroup,
                },
                &self.run_root,
                &cfg,
                crate::sandbox::Seams {
                    hypervisor: self.hypervisor.as_ref(),
                    dialer: self.dialer.as_ref(),
                    mounter: self.mounter.clone(),
                },
            )
            .instrument(span)
            .await?,
        );
        *guard = Some(sb.clone());
        drop(guard);
        self.watch_vm(sb.clone());
        self.watch_oom(sb.clone());
        let pid = Self::task_pid(&sb);
        let created_at = now();
        *pod.phase() = Phase::Running {
            pid,
            created_at: created_at.clone(),
        };
        // WaitSandbox must return when the VM dies on its own.
        let watched = pod.clone();
        tokio::spawn(async move {
            sb.vm.wait_exit().await;
            if !watched.stopping.load(Ordering::SeqCst) {
                watched.mark_stopped(VM_DIED_STATUS);
            }
        });
        tracing::info!(sandbox = %pod.id, pid, "sandbox started");
        Ok(sapi::StartSandboxResponse {
            pid,
            created_at: MessageField::some(created_at),
            ..Default::default()
        })
    }

    /// Stops the pod's VM: every process still running in it is reported
    /// exited first, so containerd is never left waiting on a task.
    pub(super) async fn do_stop_sandbox(
        &self,
        req: sapi::StopSandboxRequest,
    ) -> Result<sapi::StopSandboxResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let bound = match req.timeout_secs {
            0 => DEFAULT_STOP_TIMEOUT,
            s => Duration::from_secs(u64::from(s)),
        };
        self.stop_pod_vm(&pod, bound).await;
        Ok(sapi::StopSandboxResponse::default())
    }

    async fn stop_pod_vm(&self, pod: &Pod, bound: Duration) {
        pod.stopping.store(true, Ordering::SeqCst);
        let sb = self.sandbox.lock().await.take();
        if let Some(sb) = sb {
            self.report_all_exited(&sb).await;
            match tokio::time::timeout(bound, sb.shutdown()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(sandbox = %pod.id, error = %e, "stopping the VM"),
                Err(_) => {
                    tracing::warn!(sandbox = %pod.id, "graceful stop timed out: killing the VM");
                    sb.stop_port_forward().await;
                    if let Err(e) = sb.vm.stop().await {
                        tracing::warn!(sandbox = %pod.id, error = %e, "killing the VM");
                    }
                    if let Err(e) = sb.mounter.teardown(&sb.paths).await {
                        tracing::warn!(sandbox = %pod.id, error = %e, "cleaning up");
                    }
                }
            }
        }
        pod.mark_stopped(0);
    }

    pub(super) async fn do_wait_sandbox(
        &self,
        req: sapi::WaitSandboxRequest,
    ) -> Result<sapi::WaitSandboxResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let mut rx = pod.exit.subscribe();
        let exit = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::NotFound(format!("sandbox {:?} went away", pod.id)))?
            .clone();
        let exit = exit.ok_or_else(|| Error::NotFound("no exit".into()))?;
        Ok(sapi::WaitSandboxResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    pub(super) async fn do_sandbox_status(
        &self,
        req: sapi::SandboxStatusRequest,
    ) -> Result<sapi::SandboxStatusResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let phase = pod.phase().clone();
        let exit = pod.exit.borrow().clone();
        let mut info = HashMap::new();
        info.insert("vmm".to_owned(), "qemu".to_owned());
        let (pid, state, created_at) = match phase {
            Phase::Created => (0, STATE_NOTREADY, None),
            Phase::Running { pid, created_at } => (pid, STATE_READY, Some(created_at)),
            Phase::Stopped { pid, created_at } => (pid, STATE_NOTREADY, created_at),
        };
        let extra = if req.verbose {
            let sb = self.running_sandbox().await;
            let detail = serde_json::json!({
                "sandbox_id": pod.id,
                "netns": pod.params.netns,
                "hostname": pod.params.hostname,
                "vm_pids": sb.as_ref().map(|s| s.vm.pids()).unwrap_or_default(),
                "containers": self.containers().keys().cloned().collect::<Vec<_>>(),
            });
            info.insert("detail".to_owned(), detail.to_string());
            MessageField::some(Any {
                type_url: "kata-shim/sandbox-status".into(),
                value: detail.to_string().into_bytes(),
                ..Default::default()
            })
        } else {
            MessageField::none()
        };
        Ok(sapi::SandboxStatusResponse {
            sandbox_id: pod.id.clone(),
            pid,
            state: state.to_owned(),
            info,
            created_at: MessageField::from_option(created_at),
            exited_at: MessageField::from_option(exit.map(|e| e.at)),
            extra,
            ..Default::default()
        })
    }

    /// Alive = the VM runs and its agent answers.
    pub(super) async fn do_ping_sandbox(
        &self,
        req: sapi::PingRequest,
    ) -> Result<sapi::PingResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let sb = self.running_sandbox().await.ok_or_else(|| {
            Error::FailedPrecondition(format!("sandbox {:?} is not running", pod.id))
        })?;
        tokio::time::timeout(Duration::from_secs(5), sb.agent.check())
            .await
            .map_err(|_| Error::FailedPrecondition("the agent does not answer".into()))??;
        Ok(sapi::PingResponse::default())
    }

    /// Tears down whatever is left, then lets the daemon exit.
    pub(super) async fn do_shutdown_sandbox(
        &self,
        req: sapi::ShutdownSandboxRequest,
    ) -> Result<sapi::ShutdownSandboxResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        self.stop_pod_vm(&pod, DEFAULT_STOP_TIMEOUT).await;
        self.containers().clear();
        self.pod.lock().take();
        tracing::info!(sandbox = %pod.id, "sandbox shut down");
        // Answer first: the exit closes the server.
        let exit = self.exit.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            exit.notify_one();
        });
        Ok(sapi::ShutdownSandboxResponse::default())
    }

    /// The pod's metrics: its containers' cgroup statistics in the guest,
    /// summed (typed for the host's cgroup version); a container whose
    /// statistics cannot be read (it is just being deleted) is skipped.
    pub(super) async fn do_sandbox_metrics(
        &self,
        req: sapi::SandboxMetricsRequest,
    ) -> Result<sapi::SandboxMetricsResponse> {
        let pod = self.pod(&req.sandbox_id)?;
        let sb = self.live_sandbox().await?;
        let ids: Vec<String> = self.containers().keys().cloned().collect();
        let mut each = Vec::with_capacity(ids.len());
        for cid in ids {
            match sb.agent.stats_container(&cid).await {
                Ok(s) => each.push(s),
                Err(e) => tracing::debug!(sandbox = %pod.id, container = %cid, "stats: {e}"),
            }
        }
        let stats = crate::pod_stats::sum(&each);
        let mut resp = sapi::SandboxMetricsResponse::default();
        let m = resp.metrics.mut_or_insert_default();
        m.timestamp = MessageField::some(now());
        m.id = pod.id.clone();
        m.data = MessageField::some(crate::stats::to_metrics_any(
            &stats,
            crate::stats::host_cgroup_v2(),
        ));
        Ok(resp)
    }

    /// Publishes TaskExit for every process still running in the pod.
    async fn report_all_exited(&self, sb: &Sandbox) {
        let pid = Self::task_pid(sb);
        let live: Vec<Arc<super::Container>> = self.containers().values().cloned().collect();
        for c in live {
            let execs: Vec<_> = c
                .execs()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (eid, p) in execs {
                super::lifecycle::publish_exit(
                    self.events.as_ref(),
                    &c,
                    &p,
                    &eid,
                    pid,
                    VM_DIED_STATUS,
                )
                .await;
            }
            super::lifecycle::publish_exit(
                self.events.as_ref(),
                &c,
                &c.init,
                "",
                pid,
                VM_DIED_STATUS,
            )
            .await;
        }
    }
}

fn platform() -> sapi::PlatformResponse {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let mut resp = sapi::PlatformResponse::default();
    let p = resp.platform.mut_or_insert_default();
    p.os = "linux".into();
    p.architecture = arch.into();
    resp
}

#[async_trait]
impl SandboxApi for TaskService {
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::CreateSandboxRequest,
    ) -> TtrpcResult<sapi::CreateSandboxResponse> {
        Ok(self.do_create_sandbox(req).await?)
    }

    async fn start_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::StartSandboxRequest,
    ) -> TtrpcResult<sapi::StartSandboxResponse> {
        Ok(self.do_start_sandbox(req).await?)
    }

    /// The guest's platform is the host's (no cross-arch VMs); answered
    /// whatever the pod's phase, as containerd may ask before Start.
    async fn platform(
        &self,
        _ctx: &TtrpcContext,
        _req: sapi::PlatformRequest,
    ) -> TtrpcResult<sapi::PlatformResponse> {
        Ok(platform())
    }

    async fn stop_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::StopSandboxRequest,
    ) -> TtrpcResult<sapi::StopSandboxResponse> {
        Ok(self.do_stop_sandbox(req).await?)
    }

    async fn wait_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::WaitSandboxRequest,
    ) -> TtrpcResult<sapi::WaitSandboxResponse> {
        Ok(self.do_wait_sandbox(req).await?)
    }

    async fn sandbox_status(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::SandboxStatusRequest,
    ) -> TtrpcResult<sapi::SandboxStatusResponse> {
        Ok(self.do_sandbox_status(req).await?)
    }

    async fn ping_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::PingRequest,
    ) -> TtrpcResult<sapi::PingResponse> {
        Ok(self.do_ping_sandbox(req).await?)
    }

    async fn shutdown_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::ShutdownSandboxRequest,
    ) -> TtrpcResult<sapi::ShutdownSandboxResponse> {
        Ok(self.do_shutdown_sandbox(req).await?)
    }

    async fn sandbox_metrics(
        &self,
        _ctx: &TtrpcContext,
        req: sapi::SandboxMetricsRequest,
    ) -> TtrpcResult<sapi::SandboxMetricsResponse> {
        Ok(self.do_sandbox_metrics(req).await?)
    }
}
