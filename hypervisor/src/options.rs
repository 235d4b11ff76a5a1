//! The parts of the VM description beyond [`VmConfig`](crate::VmConfig):
//! QEMU's seccomp sandbox, the entropy source, CPU features, vCPU and memory
//! hotplug limits, the shared file system kind. Given once per
//! [`Qemu`](crate::Qemu) ([`Qemu::with_options`](crate::Qemu::with_options)),
//! as they come from the host's configuration; [`Default`] is what a VM gets
//! without configuration.

use std::path::PathBuf;

/// QEMU's own seccomp filter (`-sandbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seccomp {
    /// No filter.
    Off,
    /// `-sandbox on` denying obsolete calls, privilege elevation, spawning
    /// processes and resource control (what upstream kata configures).
    On,
}

/// How the sandbox's shared directory reaches the guest (mount tag `kataShared`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedFsKind {
    /// vhost-user-fs backed by a supervised `virtiofsd`.
    VirtioFs,
    /// virtio-9p served by QEMU itself: no daemon, slower; for hosts without virtiofsd.
    Virtio9p,
}

/// Memory hotplug room: DIMM slots and the most memory the VM may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHotplug {
    pub slots: u32,
    pub max_mib: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmOptions {
    pub seccomp: Seccomp,
    /// A virtio-rng device reading this host file (e.g. `/dev/urandom`); `None` = no device.
    pub entropy_source: Option<PathBuf>,
    /// Appended to `-cpu` (`max`/`host`), e.g. `pmu=off,-vmx`; empty = none.
    pub cpu_features: String,
    /// Most vCPUs the VM may be resized to (q35 only); `None` = no vCPU hotplug.
    pub max_vcpus: Option<u32>,
    /// `None` = no memory hotplug (q35 only).
    pub memory_hotplug: Option<MemoryHotplug>,
    pub shared_fs: SharedFsKind,
    /// virtiofsd `--cache` policy.
    pub virtio_fs_cache: VirtioFsCache,
    /// Extra virtiofsd arguments, appended after ours (e.g. `--thread-pool-size=2`).
    pub virtio_fs_extra_args: Vec<String>,
}

/// virtiofsd's `--cache` policy (upstream kata's `virtio_fs_cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioFsCache {
    Auto,
    Always,
    Never,
    Metadata,
}

impl VirtioFsCache {
    /// The value virtiofsd takes.
    pub fn as_arg(self) -> &'static str {
        match self {
            VirtioFsCache::Auto => "auto",
            VirtioFsCache::Always => "always",
            VirtioFsCache::Never => "never",
            VirtioFsCache::Metadata => "metadata",
        }
    }
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            seccomp: Seccomp::On,
            entropy_source: Some(PathBuf::from("/dev/urandom")),
            cpu_features: String::new(),
            max_vcpus: None,
            memory_hotplug: None,
            shared_fs: SharedFsKind::VirtioFs,
            virtio_fs_cache: VirtioFsCache::Auto,
            virtio_fs_extra_args: Vec::new(),
        }
    }
}
