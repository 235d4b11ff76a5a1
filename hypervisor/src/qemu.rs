//! The QEMU implementation of [`Hypervisor`]: validates, starts the helper
//! daemons, launches QEMU, connects QMP, supervises, stops.

mod hotplug;
mod supervise;

use supervise::{connect_qmp, watch_any_exit, watch_events};

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{broadcast, watch, Mutex};
use tokio::time::Instant;

use crate::accel::{
    host_cpus, resolve_accel, resolve_vsock, HostProbe, ResolvedAccel, ResolvedVsock,
};
use crate::cid::{CidAllocator, CidLease};
use crate::cmdline::{boot, vsock, CommandLine};
use crate::console::{spawn_watching_reader, Marker, Ring, Source};
use crate::helpers::{self, HelperSpec};
use crate::options::{SharedFsKind, VmOptions};
use crate::process::Supervised;
use crate::qmp::Qmp;
use crate::state::{self, ProcessRecord, StateFile};
use crate::vsock_gate::Gate;
use crate::{
    config, Error, Hypervisor, MachineType, Result, VcpuInfo, Vm, VmConfig, VmEvent, VsockEndpoint,
};

/// Each QMP exchange is bounded by this.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until the guest's agent listens on vsock: its console line (when
/// configured) ends the wait at once; otherwise the vhost-user-vsock device
/// must be started (see [`wait_vhost_started`]), then idle for
/// [`VSOCK_SETTLE`]. The first to come wins; nothing is cancelled mid-QMP.
async fn wait_vsock_ready(
    qmp: &mut Qmp,
    deadline: Instant,
    qemu: Option<&Supervised>,
    agent_line: &mut watch::Receiver<bool>,
) -> &'static str {
    match wait_vhost_started(qmp, deadline, qemu, Some(&mut *agent_line)).await {
        VhostWait::AgentLine => "agent line",
        VhostWait::Started | VhostWait::TimedOut => {
            tokio::select! {
                _ = tokio::time::sleep(VSOCK_SETTLE) => "vhost started + settle",
                _ = line_seen(Some(agent_line)) => "agent line",
            }
        }
    }
}

/// How long the hybrid vsock stays closed waiting for the guest's driver.
/// Opening it earlier wedges vhost-device-vsock for good (see the gate in
/// `launch`); with twenty TCG guests booting at once on two cores the
/// driver came up after more than the 10 s start timeout, and 1 pod in 20
/// never answered its dial.
const VSOCK_READY_TIMEOUT: Duration = Duration::from_secs(120);

/// How long after launch QEMU's kernel and initrd pages are given back when
/// the agent's ready line does not come (another agent, log level).
const RECLAIM_FALLBACK: Duration = Duration::from_secs(10);

/// Once the guest has booted, pages out QEMU's mappings of the kernel and
/// initrd files (see [`crate::reclaim`]); in the background, best effort.
fn reclaim_boot_files(config: &VmConfig, pid: u32, mut booted: watch::Receiver<bool>) {
    let files = vec![config.kernel.clone(), config.initrd.clone()];
    let sandbox = config.id.clone();
    tokio::spawn(async move {
        let _ = tokio::time::timeout(RECLAIM_FALLBACK, line_seen(Some(&mut booted))).await;
        let done = tokio::task::spawn_blocking(move || crate::reclaim::page_out(pid, &files)).await;
        match done {
            Ok(Ok(bytes)) => {
                tracing::debug!(sandbox = %sandbox, bytes, "kernel and initrd pages given back")
            }
            Ok(Err(e)) => {
                tracing::debug!(sandbox = %sandbox, error = %e, "kernel and initrd pages kept")
            }
            Err(e) => tracing::debug!(sandbox = %sandbox, error = %e, "page-out task"),
        }
    });
}

/// Resolves once the line was seen; never, when there is no line to wait
/// for or it cannot come any more.
async fn line_seen(rx: Option<&mut watch::Receiver<bool>>) {
    let seen = match rx {
        Some(rx) => rx.wait_for(|seen| *seen).await.is_ok(),
        None => false,
    };
    if !seen {
        std::future::pending::<()>().await;
    }
}

enum VhostWait {
    AgentLine,
    Started,
    TimedOut,
}

/// Polls QMP until the vhost-user-vsock device is started (the guest driver
/// is up and QEMU handed the vrings to vhost-device-vsock), the agent's
/// console line shows, QEMU exits, or `deadline`. QEMU without
/// `x-query-virtio-status` (before 7.2) counts as started: the old behaviour.
async fn wait_vhost_started(
    qmp: &mut Qmp,
    deadline: Instant,
    qemu: Option<&Supervised>,
    mut agent_line: Option<&mut watch::Receiver<bool>>,
) -> VhostWait {
    let path = format!(
        "/machine/peripheral/{}/virtio-backend",
        crate::cmdline::vsock::VHOST_USER_VSOCK_ID
    );
    loop {
        match qmp
            .execute(
                "x-query-virtio-status",
                Some(serde_json::json!({ "path": path })),
            )
            .await
        {
            Ok(v) => match v.get("vhost-started") {
                Some(serde_json::Value::Bool(true)) => return VhostWait::Started,
                Some(_) => {}
                None => {
                    tracing::debug!("QMP reports no vhost state: not waiting");
                    return VhostWait::Started;
                }
            },
            Err(e) => {
                tracing::debug!("no vhost state from QMP ({e}): not waiting");
                return VhostWait::Started;
            }
        }
        if Instant::now() >= deadline || qemu.is_some_and(Supervised::has_exited) {
            tracing::warn!("vhost-user-vsock not started in time; opening the vsock anyway");
            return VhostWait::TimedOut;
        }
        // Between QMP commands only: a command is never cut off mid-answer.
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(25)) => {}
            _ = line_seen(agent_line.as_deref_mut()) => return VhostWait::AgentLine,
        }
    }
}

/// Pause before QMP `stop` and after `cont` for vhost-device-vsock to be
/// idle (see `vsock_gate`): without it, 1 run in 6 of `agent_answers_after_cont`
/// lost the helper's vring worker on this loaded 2-core host.
const VSOCK_SETTLE: Duration = Duration::from_millis(200);
/// How long `stop` waits for QMP `quit` before killing QEMU.
const QUIT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `stop` waits for QEMU to exit after `quit` before killing it.
const EXIT_AFTER_QUIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Guest CIDs tried before giving up (kernel vhost-vsock only): a CID this
/// host's lock files say is free can still be taken by a VM another runtime
/// started.
const MAX_CID_ATTEMPTS: u32 = 32;
pub use crate::cmdline::{QMP_EVENTS_SOCKET, QMP_SOCKET, SHARED_FS_TAG};

/// Launches QEMU VMs.
#[derive(Debug, Clone, Default)]
pub struct Qemu {
    probe: HostProbe,
}

impl Qemu {
    pub fn new() -> Self {
        Self::default()
    }

    /// With other host paths for the KVM / PVM / vhost-vsock probes.
    pub fn with_probe(probe: HostProbe) -> Self {
        Self { probe }
    }
}

#[async_trait]
impl Hypervisor for Qemu {
    // Over 80 lines on purpose: the launch sequence in order (validate, helpers, CID attempts);
    // each failure undoes exactly what came before it.
    async fn launch(&self, config: VmConfig, options: &VmOptions) -> Result<Box<dyn Vm>> {
        Ok(Box::new(
            QemuVm::launch(config, &self.probe, options).await?,
        ))
    }
}

/// Granularity of memory hotplug: the guest onlines memory in blocks of this size.
pub const MEMORY_HOTPLUG_ALIGN_MIB: u32 = 128;
/// How long the event watcher tries to reach the event monitor.
const EVENTS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A running QEMU VM with its helpers.
#[derive(Debug)]
pub struct QemuVm {
    id: String,
    run_dir: PathBuf,
    endpoint: VsockEndpoint,
    console: Ring,
    qemu: Supervised,
    helpers: Vec<Supervised>,
    any_exit: watch::Receiver<Option<String>>,
    qmp: Mutex<Option<Qmp>>,
    stopped: Mutex<bool>,
    events: broadcast::Sender<VmEvent>,
    event_watcher: tokio::task::JoinHandle<()>,
    options: VmOptions,
    /// Hot-plugged DIMMs so far (names `dimm<N>`).
    dimms: Mutex<u32>,
    /// NICs so far and the root ports left for hot-plugged ones.
    nics: Mutex<hotplug::NicSlots>,
    /// Hybrid vsock only: holds host traffic while the VM is paused.
    gate: Option<Gate>,
    /// Kernel vhost-vsock only: the guest CID's host-wide lease.
    _cid: Option<CidLease>,
}

/// The processes started so far, killed if the launch fails.
struct Launching {
    sandbox: String,
    run_dir: PathBuf,
    helpers: Vec<Supervised>,
    qemu: Option<Supervised>,
    /// Set by QEMU's console reader on the agent's ready line.
    agent_line: watch::Sender<bool>,
    /// Kernel vhost-vsock: the guest CID, held for the VM's life.
    cid: Option<CidLease>,
}

impl Launching {
    async fn write_state(&self) -> Result<()> {
        let processes = self
            .helpers
            .iter()
            .chain(self.qemu.iter())
            .filter_map(|p| {
                p.start_time.map(|start_time| ProcessRecord {
                    name: p.name.to_string(),
                    pid: p.pid,
                    start_time,
                })
            })
            .collect();
        state::write(
            &self.run_dir,
            &StateFile {
                sandbox_id: self.sandbox.clone(),
                processes,
            },
        )
        .await
    }

    async fn abort(self) {
        if let Some(q) = &self.qemu {
            q.kill_and_wait().await;
        }
        for h in &self.helpers {
            h.kill_and_wait().await;
        }
        if let Err(e) = state::remove_run_dir(&self.run_dir).await {
            tracing::warn!(sandbox = %self.sandbox, "{e}");
        }
    }
}

impl QemuVm {
    pub async fn launch(config: VmConfig, probe: &HostProbe, options: &VmOptions) -> Result<Self> {
        let sandbox = config.id.clone();
        let (accel, reason) = resolve_accel(config.accel, probe)?;
        let vsock_kind = resolve_vsock(config.vsock, probe)?;
        config::validate(&config, options, host_cpus(), vsock_kind)?;
        tracing::info!(sandbox = %sandbox, accel = ?accel, vsock = ?vsock_kind, "accelerator: {reason}");

        let started = Instant::now();
        let deadline = started + config.start_timeout;
        // A run dir left by an earlier owner: kill what it recorded, start afresh.
        state::cleanup_run_dir(&config.run_dir).await?;
        // QMP, vsock and vhost-user sockets live here: root's alone.
        let mut dir = tokio::fs::DirBuilder::new();
        dir.recursive(true).mode(0o700);
        dir.create(&config.run_dir).await.map_err(|e| Error::Io {
            what: format!("creating {}", config.run_dir.display()),
            source: e,
        })?;
        tokio::fs::set_permissions(
            &config.run_dir,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o700),
        )
        .await
        .map_err(|e| Error::Io {
            what: format!("chmod {}", config.run_dir.display()),
            source: e,
        })?;

        let ring = Ring::default();
        let (agent_line_seen, mut agent_line) = watch::channel(false);
        let mut launching = Launching {
            sandbox: sandbox.clone(),
            run_dir: config.run_dir.clone(),
            helpers: Vec::new(),
            qemu: None,
            agent_line: agent_line_seen,
            cid: None,
        };
        match Self::start(
            &config,
            options,
            accel,
            vsock_kind,
            deadline,
            &ring,
            &mut launching,
        )
        .await
        {
            Ok((mut qmp, endpoint)) => {
                let gate = match &endpoint {
                    VsockEndpoint::Hybrid { uds_path } => match Gate::listen(
                        uds_path,
                        config.run_dir.join(helpers::HYBRID_VSOCK_BACKEND_SOCKET),
                        sandbox.clone(),
                    ) {
                        Ok(g) => Some(g),
                        Err(e) => {
                            launching.abort().await;
                            return Err(e);
                        }
                    },
                    VsockEndpoint::Kernel { .. } => None,
                };
                if let Some(gate) = &gate {
                    // Host traffic before the guest's driver set up the vrings
                    // can also cost vhost-device-vsock its worker ("backend
                    // event before vring initialization", then CONNECTs that
                    // are never answered: ~1 boot in 15 here). Clients wait
                    // at the gate until QEMU has started the vhost device.
                    gate.close().await;
                    let ready = Instant::now() + VSOCK_READY_TIMEOUT;
                    let on =
                        wait_vsock_ready(&mut qmp, ready, launching.qemu.as_ref(), &mut agent_line)
                            .await;
                    gate.open();
                    tracing::info!(sandbox = %sandbox, on, elapsed = ?started.elapsed(), "hybrid vsock open");
                }
                let Launching {
                    helpers, qemu, cid, ..
                } = launching;
                let Some(qemu) = qemu else {
                    return Err(Error::Internal("QEMU missing after launch"));
                };
                let (panicked_tx, panicked) = watch::channel(None);
                let any_exit = watch_any_exit(
                    qemu.exit_watch(),
                    panicked,
                    helpers.iter().map(Supervised::exit_watch),
                );
                tracing::info!(sandbox = %sandbox, elapsed = ?started.elapsed(), "VM launched");
                reclaim_boot_files(&config, qemu.pid, agent_line.clone());
                let (events, _) = broadcast::channel(64);
                let event_watcher = tokio::spawn(watch_events(
                    config.run_dir.join(QMP_EVENTS_SOCKET),
                    qemu.exit_watch(),
                    events.clone(),
                    panicked_tx,
                    sandbox.clone(),
                ));
                let boot_nics = config.network.as_ref().map_or(0, |n| n.nics.len() as u32);
                Ok(QemuVm {
                    _cid: cid,
                    events,
                    event_watcher,
                    options: options.clone(),
                    dimms: Mutex::new(0),
                    nics: Mutex::new(hotplug::NicSlots {
                        machine: config.machine,
                        next_index: boot_nics,
                        ports_used: 0,
                        ports: if config.machine == MachineType::Q35 && config.network.is_some() {
                            crate::cmdline::net::NIC_HOTPLUG_PORTS
                        } else {
                            0
                        },
                    }),
                    gate,
                    id: sandbox,
                    run_dir: config.run_dir,
                    endpoint,
                    console: ring,
                    qemu,
                    helpers,
                    any_exit,
                    qmp: Mutex::new(Some(qmp)),
                    stopped: Mutex::new(false),
                })
            }
            Err(e) => {
                tracing::warn!(sandbox = %sandbox, "launch failed: {e}");
                launching.abort().await;
                Err(e)
            }
        }
    }

    // Over 80 lines on purpose: QEMU's start in order (spawn, state file, QMP, vsock gate,
    // watchers); every step's cleanup needs what the earlier ones started.
    async fn start(
        config: &VmConfig,
        options: &VmOptions,
        accel: ResolvedAccel,
        vsock_kind: ResolvedVsock,
        deadline: Instant,
        ring: &Ring,
        launching: &mut Launching,
    ) -> Result<(Qmp, VsockEndpoint)> {
        let sandbox = config.id.as_str();
        let mut specs: Vec<HelperSpec> = Vec::new();
        if options.shared_fs == SharedFsKind::VirtioFs {
            specs.push(helpers::virtiofsd(config, options));
        }
        if vsock_kind == ResolvedVsock::VhostUser {
            specs.push(helpers::vhost_device_vsock(config));
        }
        for spec in &specs {
            launching
                .helpers
                .push(helpers::spawn_helper(spec, sandbox, ring)?);
        }
        launching.write_state().await?;
        for (spec, proc) in specs.iter().zip(&launching.helpers) {
            helpers::wait_for_socket(
                &spec.ready_socket,
                proc,
                deadline,
                config.start_timeout,
                ring,
            )
            .await?;
        }

        let attempts = if vsock_kind == ResolvedVsock::Vhost {
            MAX_CID_ATTEMPTS
        } else {
            1
        };
        let mut last_err = None;
        let mut next_cid = crate::cid::FIRST_GUEST_CID;
        for _ in 0..attempts {
            let (device, endpoint) = match vsock_kind {
                ResolvedVsock::Vhost => {
                    // A retry's QEMU is gone: its CID goes back first.
                    launching.cid = None;
                    let from = next_cid;
                    let lease = tokio::task::spawn_blocking(move || {
                        CidAllocator::default().lease_from(from)
                    })
                    .await
                    .map_err(|e| Error::Io {
                        what: "guest CID lease".into(),
                        source: std::io::Error::other(e),
                    })??;
                    let cid = lease.cid;
                    next_cid = cid.saturating_add(1);
                    launching.cid = Some(lease);
                    (
                        vsock::VsockDevice::Vhost {
                            cid,
                            transport: crate::cmdline::Transport::Pci,
                        },
                        VsockEndpoint::Kernel { cid },
                    )
                }
                ResolvedVsock::VhostUser => (
                    vsock::VsockDevice::VhostUser {
                        socket: config.run_dir.join(helpers::VHOST_USER_VSOCK_SOCKET),
                        transport: crate::cmdline::Transport::Pci,
                    },
                    VsockEndpoint::Hybrid {
                        uds_path: config.run_dir.join(helpers::HYBRID_VSOCK_SOCKET),
                    },
                ),
            };
            let mut cmdline = CommandLine::for_config(config, options, accel, device);
            if config.machine == MachineType::Microvm && accel == ResolvedAccel::Tcg {
                let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
                cmdline.boot.machine_params =
                    boot::microvm_tcg_params(boot::tsc_khz_from_cpuinfo(&cpuinfo));
            }
            let args = cmdline.args();
            let netns = config.network.as_ref().map(|n| n.netns.as_path());
            let (qemu, stdout) =
                helpers::spawn("qemu", &config.qemu_path, &args, sandbox, ring, netns)?;
            if let Some(out) = stdout {
                let marker = config.console_ready.clone().map(|text| Marker {
                    text,
                    seen: launching.agent_line.clone(),
                });
                spawn_watching_reader(
                    out,
                    ring.clone(),
                    sandbox.to_string(),
                    Source::Console,
                    marker,
                );
            }
            launching.qemu = Some(qemu);
            launching.write_state().await?;
            let Some(qemu) = launching.qemu.as_ref() else {
                continue;
            };
            match connect_qmp(
                &config.run_dir.join(QMP_SOCKET),
                qemu,
                deadline,
                config.start_timeout,
                ring,
            )
            .await
            {
                Ok(mut qmp) => {
                    let status = qmp.query_status().await?;
                    tracing::info!(sandbox, pid = qemu.pid, status = %status.status, "QEMU up");
                    return Ok((qmp, endpoint));
                }
                Err(Error::ProcessExited { what, output })
                    if vsock_kind == ResolvedVsock::Vhost
                        && output.contains("Address already in use") =>
                {
                    tracing::info!(sandbox, ?endpoint, "guest CID in use, trying the next one");
                    last_err = Some(Error::ProcessExited { what, output });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(Error::Internal("no QEMU attempt made")))
    }

    /// Runs `f` on the QMP session, reconnecting once if it was lost.
    async fn with_qmp<T>(
        &self,
        f: impl for<'a> FnOnce(
            &'a mut Qmp,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T>> + Send + 'a>,
        >,
    ) -> Result<T> {
        if self.qemu.has_exited() {
            return Err(Error::Exited);
        }
        let mut guard = self.qmp.lock().await;
        if guard.is_none() {
            *guard = Some(Qmp::connect(&self.run_dir.join(QMP_SOCKET), QMP_TIMEOUT).await?);
        }
        let Some(qmp) = guard.as_mut() else {
            return Err(Error::Internal("no QMP session"));
        };
        let result = f(qmp).await;
        if matches!(result, Err(Error::Io { .. } | Error::QmpClosed)) {
            *guard = None;
        }
        result
    }

    /// QMP `query-status`: running, paused, ...
    pub async fn status(&self) -> Result<crate::qmp::Status> {
        self.with_qmp(|q| Box::pin(q.query_status())).await
    }

    /// RAM in bytes: (at boot, hot-plugged).
    pub async fn memory_summary(&self) -> Result<(u64, u64)> {
        self.with_qmp(|q| Box::pin(q.query_memory_size_summary()))
            .await
    }

    /// The QEMU process id.
    pub fn qemu_pid(&self) -> u32 {
        self.qemu.pid
    }

    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }
}

#[async_trait]
impl Vm for QemuVm {
    fn vsock(&self) -> VsockEndpoint {
        self.endpoint.clone()
    }

    fn console_tail(&self) -> String {
        self.console.tail()
    }

    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.qemu.pid)
            .chain(self.helpers.iter().map(|h| h.pid))
            .collect()
    }

    async fn wait_exit(&self) {
        let mut rx = self.any_exit.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    fn exit_reason(&self) -> Option<String> {
        self.any_exit.borrow().clone()
    }

    async fn pause(&self) -> Result<()> {
        // Host traffic must not reach vhost-device-vsock while its vrings are
        // stopped (see vsock_gate): close the gate first.
        if let Some(gate) = &self.gate {
            gate.close().await;
            // What already reached the helper (and the guest's answers to
            // it: credit updates) must be through before its vrings stop.
            tokio::time::sleep(VSOCK_SETTLE).await;
        }
        let stopped = self.with_qmp(|q| Box::pin(q.stop())).await;
        if stopped.is_err() {
            if let Some(gate) = &self.gate {
                gate.open();
            }
        }
        stopped
    }

    async fn resume(&self) -> Result<()> {
        self.with_qmp(|q| Box::pin(q.cont())).await?;
        if let Some(gate) = &self.gate {
            // Host traffic only once QEMU has restarted the vhost device and
            // the helper its vrings.
            let ready = Instant::now() + QMP_TIMEOUT;
            // A dead QEMU fails the QMP call, which ends the wait.
            self.with_qmp(|q| {
                Box::pin(async move {
                    // No console line to wait for after `cont`.
                    wait_vhost_started(q, ready, None, None).await;
                    Ok(())
                })
            })
            .await?;
            tokio::time::sleep(VSOCK_SETTLE).await;
            gate.open();
        }
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        let status = self.with_qmp(|q| Box::pin(q.query_status())).await?;
        match status.status.as_str() {
            "running" | "paused" => Ok(()),
            other => Err(Error::NotRunning(other.to_string())),
        }
    }

    fn subscribe_events(&self) -> Option<broadcast::Receiver<VmEvent>> {
        Some(self.events.subscribe())
    }

    async fn vcpus(&self) -> Result<Vec<VcpuInfo>> {
        let cpus = self.with_qmp(|q| Box::pin(q.query_cpus_fast())).await?;
        Ok(cpus
            .into_iter()
            .map(|c| VcpuInfo {
                index: c.cpu_index,
                thread_id: c.thread_id,
            })
            .collect())
    }

    async fn resize_vcpus(&self, count: u32) -> Result<u32> {
        self.hotplug_vcpus(count).await
    }

    async fn add_memory(&self, size_mib: u32) -> Result<()> {
        self.hotplug_memory(size_mib).await
    }

    async fn hotplug_nic(&self, nic: &crate::NicConfig) -> Result<()> {
        self.hotplug_tap_nic(nic).await
    }

    async fn stop(&self) -> Result<()> {
        let mut stopped = self.stopped.lock().await;
        if *stopped {
            return Ok(());
        }
        let sandbox = self.id.as_str();
        if !self.qemu.has_exited() {
            let quit = async {
                let mut guard = self.qmp.lock().await;
                if guard.is_none() {
                    *guard =
                        Some(Qmp::connect(&self.run_dir.join(QMP_SOCKET), QUIT_TIMEOUT).await?);
                }
                match guard.as_mut() {
                    Some(q) => q.quit().await,
                    None => Err(Error::Internal("no QMP session")),
                }
            };
            match tokio::time::timeout(QUIT_TIMEOUT, quit).await {
                Ok(Ok(())) => {
                    if tokio::time::timeout(EXIT_AFTER_QUIT_TIMEOUT, self.qemu.wait())
                        .await
                        .is_err()
                    {
                        tracing::warn!(sandbox, "QEMU did not exit after quit; killing it");
                    }
                }
                Ok(Err(e)) => tracing::warn!(sandbox, "QMP quit failed ({e}); killing QEMU"),
                Err(_) => tracing::warn!(
                    sandbox,
                    "QMP quit not answered within {QUIT_TIMEOUT:?}; killing QEMU"
                ),
            }
        }
        self.qemu.kill_and_wait().await;
        for h in &self.helpers {
            h.kill_and_wait().await;
        }
        *self.qmp.lock().await = None;
        self.event_watcher.abort();
        if let Some(gate) = &self.gate {
            gate.shutdown();
        }
        state::remove_run_dir(&self.run_dir).await?;
        tracing::info!(sandbox, "VM stopped");
        *stopped = true;
        Ok(())
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // Dropped without stop(): do not leak processes (the run dir stays for
        // cleanup_run_dir; its recorded processes are gone by then).
        self.event_watcher.abort();
        let stopped = self.stopped.try_lock().map(|s| *s).unwrap_or(true);
        if !stopped {
            self.qemu.kill();
            for h in &self.helpers {
                h.kill();
            }
        }
    }
}

#[cfg(test)]
mod tests;
