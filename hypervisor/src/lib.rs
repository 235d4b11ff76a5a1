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
//! Tests: `cargo test -p hypervisor` runs everything that needs no guest
//! (fake QEMU in python3 where available); with `KATA_GUEST_IMAGE_DIR` set to
//! a directory holding `vmlinux` (or `vmlinuz`) and `initrd.img`, the tests in
//! `tests/boot.rs` boot real VMs.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

pub mod accel;
pub mod cmdline;
pub mod config;
pub mod console;
pub mod fake;
pub mod helpers;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod state;

pub use accel::HostProbe;
pub use fake::{FakeHypervisor, FakeVm, FakeVmHandle};
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
    #[error("QMP: {0}")]
    Qmp(String),
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
}

/// Where the guest's vsock listeners are reachable from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockEndpoint {
    /// Kernel vsock: connect to (cid, port).
    Kernel { cid: u32 },
    /// Hybrid vsock: a unix socket; write `CONNECT <port>\n`, expect `OK`.
    Hybrid { uds_path: PathBuf },
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
        Err(Error::Qmp("pause not supported".into()))
    }
    /// Resumes the vCPUs (QMP `cont`).
    async fn resume(&self) -> Result<()> {
        Err(Error::Qmp("resume not supported".into()))
    }
    /// Health of the VM process itself: QMP answers and the VM is running or paused.
    async fn check(&self) -> Result<()> {
        Err(Error::Qmp("check not supported".into()))
    }
}

/// The seam the shim launches VMs through.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    async fn launch(&self, config: VmConfig) -> Result<Box<dyn Vm>>;
}

/// Cleans up after a VM whose owner died: kills the processes recorded in
/// `run_dir`'s state file and removes the directory. Missing dir is fine.
/// Only processes whose pid *and* start time match the record are killed.
pub async fn cleanup_run_dir(run_dir: &std::path::Path) -> Result<()> {
    state::cleanup_run_dir(run_dir).await
}
