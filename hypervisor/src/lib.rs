//! The `Hypervisor` seam and its QEMU implementation: one VM per sandbox,
//! described by a typed [`VmConfig`], launched with its helper daemons
//! (vhost-device-vsock, virtiofsd), controlled over QMP, watched, torn down.
//! Knows nothing about containers or OCI.
//!
//! Launch order ([`Qemu::launch`]): resolve the accelerator and vsock kind
//! ([`accel`]), validate ([`config`], nothing is spawned on error), clean a
//! stale run directory, start virtiofsd (+ vhost-device-vsock for hybrid
//! vsock) and wait for their sockets, start QEMU with the command line of
//! [`cmdline`], write `<run_dir>/state.json` ([`state`]), connect QMP
//! ([`qmp`]) and check `query-status`. With kernel vhost-vsock a guest CID
//! already in use makes QEMU exit; the next CID is tried.
//!
//! Every child is owned by a tokio task ([`process`]) that reaps it, so kills
//! never hit a recycled pid; [`Vm::wait_exit`] resolves when any of them exits.
//! [`Vm::stop`] asks QEMU to `quit` over QMP, SIGKILLs it after 2 s without an
//! answer, kills the helpers and removes the run directory.
//!
//! What [`VmConfig`] does not carry comes from [`VmOptions`] (per [`Qemu`],
//! [`Hypervisor::launch`]): QEMU's seccomp sandbox (on by default), a
//! virtio-rng entropy device (`/dev/urandom` by default), CPU features, room
//! for vCPU and memory hotplug (q35 only), virtio-9p instead of virtiofsd.
//! QEMU's events (SHUTDOWN, GUEST_PANICKED, STOP, RESUME, DEVICE_DELETED)
//! arrive on a second, event-only QMP monitor and are broadcast
//! ([`Vm::subscribe_events`]); [`Vm::resize_vcpus`] and [`Vm::add_memory`]
//! hot-plug (the guest onlines them: agent `OnlineCPUMem`). A guest kernel
//! panic reaches QEMU through a pvpanic device ([`cmdline::panic`]): QEMU
//! reports GUEST_PANICKED and exits with status 1, and [`Vm::exit_reason`]
//! then starts with "guest kernel panicked".
//!
//! microvm under TCG: the guest cannot calibrate its TSC (no HPET, no ACPI PM
//! timer, no port 0x61) and hung at boot; the host's TSC frequency is passed
//! as `tsc_early_khz=` with `tsc=reliable`. The guest needs `virtio_mmio`.
//!
//! Sandbox pause with hybrid vsock: vhost-device-vsock 0.3.0 (the newest
//! release) loses its vring worker thread for good if host traffic reaches it
//! while QMP `stop` has its vrings stopped. The VM's hybrid-vsock socket is
//! therefore a relay of ours ([`vsock_gate`]) that [`Vm::pause`] closes
//! before `stop` and [`Vm::resume`] opens after `cont`: clients see a paused
//! agent as silent, and their open and new connections work after `cont`
//! (`tests/guest.rs`, `agent_answers_after_cont`).
//!
//! Boot time (QEMU launch → agent answers Health.Check over hybrid vsock),
//! TCG, 1 vCPU, 256 MiB, default options, on the shared 2-core machine while
//! other builds ran (`KATA_GUEST_IMAGE_DIR=build/guest cargo test -p hypervisor
//! --test guest boot_time -- --ignored --nocapture`, `KATA_BOOT_MACHINE=q35|microvm`,
//! `KATA_BOOT_RUNS=n`): q35 median 3.33 s (2.68–4.09 s, 15 boots), microvm
//! median 2.39 s (1.99–3.29 s, 10 boots). What cut it before: PVH boot of the
//! uncompressed `vmlinux` (~2x), the vsock modules loaded first and the rest in
//! the background; microvm saves the firmware. Tried without effect: gzip
//! initramfs, qboot vs SeaBIOS, kernel-parameter tweaks. The project's guest
//! kernel (`guest/image/kernel/guest.config`: VM drivers only, all built in, no
//! module loading; 15 MiB of loaded segments against Debian's 57 MiB) cut it
//! again: q35 median 0.92 s, microvm 0.68 s, against 2.42 s and 2.07 s for
//! Debian's kernel in the same session (10 boots each, idle machine; 1.09 s /
//! 0.76 s against 2.75 s / 2.40 s while other builds ran).
//!
//! How the host dials matters: re-dialing hybrid vsock on a 2 s read timeout
//! while the guest boots gave q35 a 3.87 s median and, about 1 boot in 15 (q35
//! and microvm), a vhost-device-vsock that never answered `CONNECT` again;
//! keeping one `CONNECT` pending until the guest answers (its RST ends it at
//! once while nothing listens) gave 3.33 s and 25/25 boots; dialing only once
//! the console says `agent ready` gave 2.82 s, 15/15.
//!
//! Tests: `cargo test -p hypervisor` runs everything that needs no guest
//! (fake QEMU in python3 where available); with `KATA_GUEST_IMAGE_DIR` set to
//! a directory holding `vmlinux` (or `vmlinuz`) and `initrd.img`, the tests in
//! `tests/boot.rs` and `tests/guest.rs` boot real VMs (the latter talk to the
//! agent: health, pause, hotplug, microvm + 9p, events).

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub mod accel;
pub mod cid;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod fake;
pub mod helpers;
pub mod options;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod reclaim;
pub mod state;
pub mod vsock_gate;

pub use accel::HostProbe;
pub use fake::{FakeHypervisor, FakeVm, FakeVmHandle};
pub use options::{MemoryHotplug, Seccomp, SharedFsKind, VirtioFsCache, VmOptions};
pub use qemu::{Qemu, QemuVm};

/// Errors of this crate; the shim maps them to ttrpc codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// QEMU answered a QMP command with an error (its class and description).
    #[error("QMP {command}: {class}: {desc}")]
    Qmp {
        command: String,
        class: String,
        desc: String,
    },
    /// QEMU closed its QMP monitor (it is exiting or has exited).
    #[error("QMP connection closed by QEMU")]
    QmpClosed,
    /// QEMU sent something that is not QMP.
    #[error("QMP protocol: {0}")]
    QmpProtocol(String),
    /// An operation on the VM took longer than allowed.
    #[error("{what} timed out after {timeout:?}")]
    Timeout { what: String, timeout: Duration },
    /// This VM (or hypervisor) does not do the operation.
    #[error("{0} is not supported by this VM")]
    Unsupported(&'static str),
    /// The guest refused a hot-plugged device (ACPI `_OST` status).
    #[error("the guest did not take {device}: ACPI _OST status {status:#x}")]
    HotplugRejected { device: String, status: u64 },
    /// The VM is neither running nor paused.
    #[error("VM status is {0}")]
    NotRunning(String),
    /// A broken invariant of this crate (a bug, not a condition of the host).
    #[error("internal: {0}")]
    Internal(&'static str),
    #[error("{what} did not start within {timeout:?}; console tail:\n{console}")]
    StartTimeout {
        what: String,
        timeout: Duration,
        console: String,
    },
    #[error("VM has exited")]
    Exited,
    /// QEMU or a helper exited while the VM was being started.
    #[error("{what}; output:\n{output}")]
    ProcessExited { what: String, output: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// QEMU machine type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineType {
    Q35,
    Microvm,
}

/// Accelerator choice; `Auto` resolves to KVM only where KVM can boot a standard guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// How the agent's vsock reaches the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockKind {
    /// Kernel vhost-vsock where `/dev/vhost-vsock` exists, else vhost-user.
    Auto,
    /// `vhost-vsock-pci` with a guest CID (needs `/dev/vhost-vsock`).
    Vhost,
    /// `vhost-user-vsock-pci` backed by `vhost-device-vsock`: hybrid vsock on a unix socket.
    VhostUser,
}

/// Everything needed to launch one sandbox VM. Validated before anything starts.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Sandbox id, used for names and log fields.
    pub id: String,
    /// Per-VM run directory: every socket, pid file and the state file live here.
    pub run_dir: PathBuf,
    pub qemu_path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel parameters appended after the defaults.
    pub kernel_params: String,
    pub machine: MachineType,
    pub accel: Accel,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub vsock: VsockKind,
    pub vhost_device_vsock_path: PathBuf,
    /// Host directory exported to the guest over virtio-fs with tag `kataShared`.
    pub shared_dir: PathBuf,
    pub virtiofsd_path: PathBuf,
    /// How long QEMU and its helpers may take to come up.
    pub start_timeout: Duration,
    /// The pod's NIC, if the pod has a network namespace to join.
    pub network: Option<NetworkConfig>,
    /// Text of a console line the guest prints once its agent listens on
    /// vsock. Hybrid vsock opens to clients on that line; without it (or
    /// before it) only once QEMU has started the vhost device plus a settle.
    pub console_ready: Option<String>,
}

/// The pod's network namespace and the virtio-net NICs the VM boots with,
/// each backed by a tap device there. QEMU is started inside that namespace
/// so it can open taps by name, at boot and when a NIC is hot-plugged
/// ([`Vm::hotplug_nic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// e.g. `/var/run/netns/cni-…`.
    pub netns: PathBuf,
    /// NICs present at boot, in order (may be empty: a namespace that is
    /// filled later gets its NICs hot-plugged, on q35).
    pub nics: Vec<NicConfig>,
}

/// One virtio-net NIC backed by a tap device in the pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    /// The tap device in the netns (created by the caller).
    pub tap: String,
    /// The guest NIC's MAC.
    pub mac: String,
}

/// Where the guest's vsock listeners are reachable from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockEndpoint {
    /// Kernel vsock: connect to (cid, port).
    Kernel { cid: u32 },
    /// Hybrid vsock: a unix socket; write `CONNECT <port>\n`, expect `OK`.
    Hybrid { uds_path: PathBuf },
}

/// Something QEMU reported about the VM (QMP events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmEvent {
    /// The VM is shutting down; `guest` = the guest asked (power-off, reboot).
    Shutdown { guest: bool, reason: String },
    /// The guest kernel panicked (the pvpanic device fired; QEMU then exits).
    GuestPanicked { action: String },
    /// vCPUs stopped (QMP `stop`, or an error).
    Stop,
    /// vCPUs resumed.
    Resume,
    /// A `device_del` completed.
    DeviceDeleted { id: String },
    /// The guest's ACPI answered a hotplug notification (`_OST`) for a
    /// device: `source` 1 = insert, 3 = eject; `status` 0 = success.
    AcpiOst {
        device: String,
        source: u64,
        status: u64,
    },
    /// Any other event, by name.
    Other(String),
}

impl VmEvent {
    /// From a QMP event's name and `data`.
    pub fn from_qmp(name: &str, data: &serde_json::Value) -> VmEvent {
        let text = |k: &str| {
            data.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        match name {
            "SHUTDOWN" => VmEvent::Shutdown {
                guest: data
                    .get("guest")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false),
                reason: text("reason"),
            },
            "GUEST_PANICKED" => VmEvent::GuestPanicked {
                action: text("action"),
            },
            "STOP" => VmEvent::Stop,
            "RESUME" => VmEvent::Resume,
            "DEVICE_DELETED" => VmEvent::DeviceDeleted { id: text("device") },
            "ACPI_DEVICE_OST" => {
                let info = data.get("info");
                let field = |k: &str| info.and_then(|i| i.get(k));
                VmEvent::AcpiOst {
                    device: field("device")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    source: field("source")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0),
                    status: field("status")
                        .and_then(serde_json::Value::as_u64)
                        .unwrap_or(0),
                }
            }
            other => VmEvent::Other(other.to_string()),
        }
    }
}

/// A vCPU as QEMU sees it (`query-cpus-fast`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuInfo {
    pub index: u64,
    /// The host thread running it.
    pub thread_id: u64,
}

/// A running VM.
#[async_trait]
pub trait Vm: Send + Sync {
    fn vsock(&self) -> VsockEndpoint;
    /// Last lines the guest printed on its console (for error messages).
    fn console_tail(&self) -> String;
    /// Pids of QEMU and its helper daemons.
    fn pids(&self) -> Vec<u32>;
    /// Resolves once QEMU or a helper has exited (whatever the cause).
    async fn wait_exit(&self);
    /// Stops QEMU and every helper, removes the run directory. Idempotent.
    async fn stop(&self) -> Result<()>;
    /// Why the VM ended, once [`Vm::wait_exit`] has resolved.
    fn exit_reason(&self) -> Option<String> {
        None
    }
    /// Pauses every vCPU (QMP `stop`): sandbox pause. The agent cannot answer meanwhile.
    async fn pause(&self) -> Result<()> {
        Err(Error::Unsupported("pause"))
    }
    /// Resumes the vCPUs (QMP `cont`).
    async fn resume(&self) -> Result<()> {
        Err(Error::Unsupported("resume"))
    }
    /// Health of the VM process itself: QMP answers and the VM is running or paused.
    async fn check(&self) -> Result<()> {
        Err(Error::Unsupported("check"))
    }
    /// QEMU's events from now on (SHUTDOWN, GUEST_PANICKED, STOP, RESUME, ...).
    fn subscribe_events(&self) -> Option<tokio::sync::broadcast::Receiver<VmEvent>> {
        None
    }
    /// The vCPUs (`query-cpus-fast`).
    async fn vcpus(&self) -> Result<Vec<VcpuInfo>> {
        Err(Error::Unsupported("vcpus"))
    }
    /// Hot-plugs (or unplugs what was hot-plugged) until the VM has `count`
    /// vCPUs; returns the count reached. The guest must online new vCPUs
    /// (agent `OnlineCPUMem`).
    async fn resize_vcpus(&self, count: u32) -> Result<u32> {
        let _ = count;
        Err(Error::Unsupported("vCPU hotplug"))
    }
    /// Hot-plugs `size_mib` of RAM as a DIMM (a multiple of 128 MiB, the
    /// guest's memory block); the guest must online it (`OnlineCPUMem`).
    async fn add_memory(&self, size_mib: u32) -> Result<()> {
        let _ = size_mib;
        Err(Error::Unsupported("memory hotplug"))
    }
    /// Hot-plugs a virtio-net NIC backed by `nic.tap` (which must exist in
    /// the VM's network namespace) into a free PCIe root port (q35 only;
    /// microvm has no hotplug). The guest finds it by its MAC.
    async fn hotplug_nic(&self, nic: &NicConfig) -> Result<()> {
        let _ = nic;
        Err(Error::Unsupported("NIC hotplug"))
    }
}

/// The seam the shim launches VMs through.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    /// Launches a VM: what it is (`config`) and how the hypervisor runs it
    /// (`options`, from the configuration file, per sandbox).
    async fn launch(&self, config: VmConfig, options: &VmOptions) -> Result<Box<dyn Vm>>;
}

/// Cleans up after a VM whose owner died: kills the processes recorded in
/// `run_dir`'s state file and removes the directory. Missing dir is fine.
/// Only processes whose pid *and* start time match the record are killed.
pub async fn cleanup_run_dir(run_dir: &std::path::Path) -> Result<()> {
    state::cleanup_run_dir(run_dir).await
}

#[cfg(test)]
mod tests {
    use super::VmEvent;

    #[test]
    fn qmp_events_are_typed() {
        let ost = serde_json::json!({"info": {"device": "dimm0", "slot": "0",
            "slot-type": "DIMM", "source": 1, "status": 0}});
        assert_eq!(
            VmEvent::from_qmp("ACPI_DEVICE_OST", &ost),
            VmEvent::AcpiOst {
                device: "dimm0".into(),
                source: 1,
                status: 0
            }
        );
        let panic = serde_json::json!({"action": "poweroff"});
        assert_eq!(
            VmEvent::from_qmp("GUEST_PANICKED", &panic),
            VmEvent::GuestPanicked {
                action: "poweroff".into()
            }
        );
        let shutdown = serde_json::json!({"guest": true, "reason": "guest-panic"});
        assert_eq!(
            VmEvent::from_qmp("SHUTDOWN", &shutdown),
            VmEvent::Shutdown {
                guest: true,
                reason: "guest-panic".into()
            }
        );
    }
}
