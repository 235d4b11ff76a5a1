//! The sandbox: one VM, its agent connection, and the shared directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use agent_client::{Address, Agent};
use async_trait::async_trait;
use hypervisor::{Hypervisor, NetworkConfig, Vm, VmConfig, VsockEndpoint};
use protocols::agent::{CreateSandboxRequest, Storage};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::failpoint;
use crate::host_cgroup;
use crate::network;
use crate::persist::{self, SandboxPaths, SandboxState};
use crate::share::Mounter;
use protocols::share::{driver, GUEST_SHARED_DIR, SHARED_FS_TAG};

/// Dials the guest agent; a seam so the service can run on fakes.
#[async_trait]
pub trait AgentDialer: Send + Sync {
    async fn dial(
        &self,
        addr: &Address,
        timeout: Duration,
        console_tail: &(dyn Fn() -> String + Send + Sync),
    ) -> agent_client::Result<Box<dyn Agent>>;
}

/// The real dialer (`agent_client::connect`).
pub struct VsockDialer;

#[async_trait]
impl AgentDialer for VsockDialer {
    async fn dial(
        &self,
        addr: &Address,
        timeout: Duration,
        console_tail: &(dyn Fn() -> String + Send + Sync),
    ) -> agent_client::Result<Box<dyn Agent>> {
        agent_client::connect(addr, timeout, console_tail).await
    }
}

pub struct Sandbox {
    pub id: String,
    pub paths: SandboxPaths,
    pub vm: Box<dyn Vm>,
    pub agent: Arc<dyn Agent>,
    /// The pod's netns, its taps (removed at shutdown) and what the guest
    /// knows of it; synced again at each container Start.
    pub network: Option<Mutex<network::PodNet>>,
    /// The VM's size and hotplug room (Update grows it).
    pub size: tokio::sync::Mutex<crate::vmsize::VmSize>,
    /// Owns the share's mounts and directories.
    pub mounter: Arc<dyn Mounter>,
    /// Where the daemon put itself (and so the VM) on the host.
    pub cgroup: Option<host_cgroup::Placement>,
    /// `static_sandbox_resource_mgmt`: no hotplug after boot.
    pub static_resources: bool,
    /// CRI PortForward's way into the guest (pods with a netns only).
    pub port_forward: Option<crate::portforward::Slot>,
}

/// The seams a sandbox boots through.
pub struct Seams<'a> {
    pub hypervisor: &'a dyn Hypervisor,
    pub dialer: &'a dyn AgentDialer,
    pub mounter: Arc<dyn Mounter>,
}

/// What the sandbox is booted with besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct BootParams<'a> {
    pub hostname: &'a str,
    /// The pod's network namespace (CRI creates one and CNI fills it).
    pub netns: Option<&'a Path>,
    /// No sandbox container will own the pod's PID namespace (containerd's
    /// Sandbox API): the agent holds one, as upstream's does for
    /// `sandbox_pidns` at CreateSandbox.
    pub pod_pidns: bool,
    /// The host cgroup the VM goes in (see [`crate::host_cgroup`]).
    pub cgroup: Option<(&'a host_cgroup::Host, PathBuf)>,
}

/// Moves the daemon into the sandbox's host cgroup before anything of the
/// VM starts, so QEMU and its helpers are born there.
async fn enter_cgroup(
    id: &str,
    target: Option<&(&host_cgroup::Host, PathBuf)>,
) -> Result<Option<host_cgroup::Placement>> {
    let Some((host, rel)) = target else {
        return Ok(None);
    };
    let (host, rel) = ((*host).clone(), rel.clone());
    let placement = crate::blocking::run(move || host.enter(&rel).map_err(Error::from)).await?;
    tracing::info!(sandbox = id, created = ?placement.created, "in the sandbox's host cgroup");
    Ok(Some(placement))
}

/// Back where containerd started the daemon; the sandbox's cgroup removed.
async fn leave_cgroup(placement: Option<host_cgroup::Placement>) {
    if let Some(p) = placement {
        let _ = crate::blocking::run(move || {
            p.leave();
            Ok(())
        })
        .await;
    }
}

/// Runs `step` of pod start unless the VM (QEMU or one of its helpers)
/// dies first: then the start fails at once, naming why, instead of when
/// the agent's dial or RPC times out.
pub(crate) async fn unless_vm_exits<T>(
    vm: &dyn Vm,
    step: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = step => r,
        () = vm.wait_exit() => Err(vm_exited(vm, vm.exit_reason())),
    }
}

/// The error of a pod step cut short by the VM's death (`reason`, as
/// [`Vm::exit_reason`] tells it), with the console's last lines.
pub(crate) fn vm_exited(vm: &dyn Vm, reason: Option<String>) -> Error {
    hypervisor::Error::ProcessExited {
        what: reason.unwrap_or_else(|| "the VM exited".into()),
        output: vm.console_tail(),
    }
    .into()
}

impl Sandbox {
    /// Boots the VM, connects to the agent and creates the sandbox in the
    /// guest. On failure everything started so far is torn down.
    pub async fn boot(
        id: &str,
        params: BootParams<'_>,
        root: &Path,
        config: &Config,
        seams: Seams<'_>,
    ) -> Result<Sandbox> {
        let mounter = seams.mounter.clone();
        let paths = SandboxPaths::new(root, id);
        mounter.prepare(&paths).await?;
        let cgroup = match enter_cgroup(id, params.cgroup.as_ref()).await {
            Ok(c) => c,
            Err(e) => {
                let _ = mounter.teardown(&paths).await;
                return Err(e);
            }
        };
        let mut pod = match params.netns {
            Some(ns) => {
                let t = std::time::Instant::now();
                let r = network::PodNet::prepare(ns).await;
                phase(id, "network", t);
                match r {
                    Ok(found) => Some(found),
                    Err(e) => {
                        leave_cgroup(cgroup).await;
                        let _ = mounter.teardown(&paths).await;
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let cgroup_dirs = cgroup
            .as_ref()
            .map(|c| c.created.clone())
            .unwrap_or_default();
        let result =
            Self::boot_in(id, &params, &mut pod, &cgroup_dirs, &paths, config, seams).await;
        match result {
            Ok(mut sb) => {
                sb.cgroup = cgroup;
                Ok(sb)
            }
            Err(e) => {
                // Still ours: every tap made for the pod goes.
                if let Some((pod, _)) = &mut pod {
                    pod.teardown().await;
                }
                leave_cgroup(cgroup).await;
                let _ = mounter.teardown(&paths).await;
                Err(e)
            }
        }
    }

    // Over 80 lines on purpose: the pod's boot in order (share, VM, agent, CreateSandbox, network);
    // each failure stops what was started.
    async fn boot_in(
        id: &str,
        params: &BootParams<'_>,
        pod: &mut Option<(network::PodNet, network::PodNetwork)>,
        cgroup_dirs: &[PathBuf],
        paths: &SandboxPaths,
        config: &Config,
        seams: Seams<'_>,
    ) -> Result<Sandbox> {
        let Seams {
            hypervisor,
            dialer,
            mounter,
        } = seams;
        persist::write(&SandboxState {
            sandbox_id: id.to_owned(),
            paths: paths.clone(),
            shim_pid: std::process::id(),
            cgroup_dirs: cgroup_dirs.to_vec(),
            network: pod.as_ref().map(|(p, _)| net_record(p)),
        })
        .await?;
        let q = &config.qemu;
        failpoint::gate(failpoint::Phase::Boot, id).await;
        let t = std::time::Instant::now();
        let vm = hypervisor
            .launch(
                VmConfig {
                    network: pod.as_ref().map(|(p, _)| NetworkConfig {
                        netns: p.netns.clone(),
                        nics: p.nics(),
                    }),
                    ..vm_config(id, paths, config)
                },
                &q.options,
            )
            .await?;
        let addr = match vm.vsock() {
            VsockEndpoint::Kernel { cid } => Address::Vsock {
                cid,
                port: protocols::AGENT_VSOCK_PORT,
            },
            VsockEndpoint::Hybrid { uds_path } => Address::Hybrid {
                uds_path,
                port: protocols::AGENT_VSOCK_PORT,
            },
        };
        phase(id, "vm_launch", t);
        failpoint::gate(failpoint::Phase::AgentDial, id).await;
        let t = std::time::Instant::now();
        let dial = async {
            dialer
                .dial(&addr, config.agent_dial_timeout, &|| vm.console_tail())
                .await
                .map_err(Error::from)
        };
        let agent: Arc<dyn Agent> = match unless_vm_exits(vm.as_ref(), dial).await {
            Ok(a) => Arc::from(a),
            Err(e) => {
                let _ = vm.stop().await;
                return Err(e);
            }
        };
        let req = CreateSandboxRequest {
            sandbox_id: id.to_owned(),
            hostname: params.hostname.to_owned(),
            storages: vec![Storage {
                driver: shared_fs_driver(q.options.shared_fs).into(),
                source: SHARED_FS_TAG.into(),
                fstype: shared_fs_type(q.options.shared_fs).into(),
                mount_point: format!("{GUEST_SHARED_DIR}/"),
                ..Default::default()
            }],
            sandbox_pidns: params.pod_pidns,
            ..Default::default()
        };
        phase(id, "agent_connect", t);
        failpoint::gate(failpoint::Phase::CreateSandbox, id).await;
        let t = std::time::Instant::now();
        let create = async { agent.create_sandbox(req).await.map_err(Error::from) };
        if let Err(e) = unless_vm_exits(vm.as_ref(), create).await {
            let _ = vm.stop().await;
            return Err(e);
        }
        phase(id, "create_sandbox", t);
        if let Some((p, net)) = pod.as_mut() {
            let t = std::time::Instant::now();
            let configure = p.configure_guest(agent.as_ref(), net);
            if let Err(e) = unless_vm_exits(vm.as_ref(), configure).await {
                let _ = vm.stop().await;
                return Err(e);
            }
            phase(id, "guest_network", t);
            tracing::info!(sandbox = id, netns = %p.netns.display(), nics = p.attached().len(), "pod network in the guest");
        }
        let port_forward = params
            .netns
            .map(|ns| crate::portforward::Slot::start(id, ns, vm.vsock()));
        tracing::info!(sandbox = id, "sandbox ready");
        crate::metrics::server::spawn(id, &paths.base, &paths.vm);
        Ok(Sandbox {
            id: id.to_owned(),
            paths: paths.clone(),
            vm,
            agent,
            network: pod.take().map(|(p, _)| Mutex::new(p)),
            size: tokio::sync::Mutex::new(crate::vmsize::VmSize::of(q)),
            mounter,
            cgroup: None,
            static_resources: config.static_resources,
            port_forward,
        })
    }

    /// Destroys the guest side, stops the VM and removes the sandbox's directory.
    pub async fn shutdown(&self) -> Result<()> {
        self.stop_port_forward().await;
        if tokio::time::timeout(Duration::from_secs(5), self.agent.destroy_sandbox())
            .await
            .is_err()
        {
            tracing::warn!(sandbox = %self.id, "DestroySandbox timed out");
        }
        self.vm.stop().await?;
        leave_cgroup(self.cgroup.clone()).await;
        if let Some(pod) = &self.network {
            pod.lock().await.teardown().await;
        }
        self.mounter.teardown(&self.paths).await
    }

    /// Brings the VM and the guest up to date with the pod's netns (at a
    /// container's Start): interfaces found since are hot-plugged, changed
    /// addresses, routes and neighbours pushed. New taps are recorded in
    /// the state file before anything else can fail.
    pub async fn sync_network(&self) -> Result<()> {
        let Some(pod) = &self.network else {
            return Ok(());
        };
        let t = std::time::Instant::now();
        let mut pod = pod.lock().await;
        let r = pod.sync(self.vm.as_ref(), self.agent.as_ref()).await;
        if r.as_ref().is_ok_and(|added| *added) {
            persist::write(&SandboxState {
                sandbox_id: self.id.clone(),
                paths: self.paths.clone(),
                shim_pid: std::process::id(),
                cgroup_dirs: self
                    .cgroup
                    .as_ref()
                    .map(|c| c.created.clone())
                    .unwrap_or_default(),
                network: Some(net_record(&pod)),
            })
            .await?;
        }
        phase(&self.id, "network_sync", t);
        r.map(drop)
    }
}

impl Sandbox {
    /// Ends port-forward (listener, connections, NAT rules); idempotent,
    /// for every way a sandbox goes away.
    pub async fn stop_port_forward(&self) {
        if let Some(pf) = &self.port_forward {
            pf.stop().await;
        }
    }
}

/// The taps of `pod` as the state file keeps them (for `delete` after a crash).
fn net_record(pod: &network::PodNet) -> persist::NetRecord {
    persist::NetRecord {
        netns: pod.netns.clone(),
        taps: pod
            .attached()
            .iter()
            .map(|a| persist::TapRecord {
                tap: a.tap.clone(),
                iface: a.name.clone(),
            })
            .collect(),
    }
}

/// The VM description of sandbox `id` (no pod network) for `config`.
pub fn vm_config(id: &str, paths: &SandboxPaths, config: &Config) -> VmConfig {
    let q = &config.qemu;
    VmConfig {
        id: id.to_owned(),
        run_dir: paths.vm.clone(),
        qemu_path: q.path.clone(),
        kernel: q.kernel.clone(),
        initrd: q.initrd.clone(),
        kernel_params: if config.debug_console {
            // Upstream Kata's parameters; the agent serves a shell on the port.
            format!(
                "{} agent.debug_console agent.debug_console_vport={}",
                q.kernel_params,
                protocols::DEBUG_CONSOLE_VSOCK_PORT
            )
            .trim()
            .to_owned()
        } else {
            q.kernel_params.clone()
        },
        machine: q.machine,
        accel: q.accel,
        vcpus: q.vcpus,
        memory_mib: q.memory_mib,
        vsock: q.vsock,
        vhost_device_vsock_path: q.vhost_user_vsock_daemon.clone(),
        shared_dir: paths.shared.clone(),
        virtiofsd_path: q.virtiofsd.clone(),
        start_timeout: Duration::from_secs(10),
        console_ready: Some(protocols::AGENT_READY_LINE.into()),
        network: None,
    }
}

/// Logs how long one phase of pod start took (`make bench` reads these).
pub fn phase(sandbox: &str, name: &str, since: std::time::Instant) {
    crate::metrics::record_phase(sandbox, name, since.elapsed().as_secs_f64());
    tracing::info!(
        sandbox,
        phase = name,
        ms = since.elapsed().as_secs_f64() * 1000.0,
        "phase done"
    );
}

/// The agent's storage driver for the configured shared fs.
fn shared_fs_driver(kind: hypervisor::SharedFsKind) -> &'static str {
    match kind {
        hypervisor::SharedFsKind::VirtioFs => driver::VIRTIO_FS,
        hypervisor::SharedFsKind::Virtio9p => driver::NINE_P,
    }
}

/// The guest file system type for the configured shared fs.
fn shared_fs_type(kind: hypervisor::SharedFsKind) -> &'static str {
    match kind {
        hypervisor::SharedFsKind::VirtioFs => "virtiofs",
        hypervisor::SharedFsKind::Virtio9p => "9p",
    }
}
