//! Kata's `configuration.toml`, parsed once into validated types.
//!
//! Lookup order: containerd's runtime option `ConfigPath`, then `KATA_CONF_FILE`,
//! then the default paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hypervisor::{
    Accel, MachineType, MemoryHotplug, Seccomp, SharedFsKind, VirtioFsCache, VmOptions, VsockKind,
};
use serde::Deserialize;

use crate::annotations::{self, AnnotationPolicy, Overrides};
use crate::error::{Error, Result};

pub mod dropins;

pub const DEFAULT_PATHS: [&str; 2] = [
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
];

/// Validated configuration of one sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub source: PathBuf,
    pub qemu: QemuConfig,
    pub agent_dial_timeout: Duration,
    /// `[agent.kata] debug_console_enabled`: the guest serves a shell on
    /// [`protocols::DEBUG_CONSOLE_VSOCK_PORT`] (`containerd-shim-kata-v2 console`).
    pub debug_console: bool,
    pub debug: bool,
    /// `[runtime] sandbox_cgroup_only`: the VM and the shim's work go in the
    /// sandbox's own cgroup on the host (else in `kata_overhead/<id>`).
    pub sandbox_cgroup_only: bool,
    /// `[runtime] static_sandbox_resource_mgmt`: the VM is sized once at
    /// boot (the pod's annotations) and never hot-plugged.
    pub static_resources: bool,
    /// Which `io.katacontainers.config.*` annotations may override this.
    pub annotation_policy: AnnotationPolicy,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QemuConfig {
    pub path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub machine: MachineType,
    pub kernel_params: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// What `podsize::apply` added to `vcpus`/`memory_mib` for the pod's
    /// limits; the rest is the guest's own share (Kata's default size).
    pub pod_vcpus: u32,
    pub pod_memory_mib: u32,
    pub accel: Accel,
    pub vsock: VsockKind,
    pub vhost_user_vsock_daemon: PathBuf,
    pub virtiofsd: PathBuf,
    /// Seccomp, entropy, CPU features, hotplug room, shared fs (see [`vm_options`]).
    pub options: VmOptions,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawFile {
    hypervisor: RawHypervisors,
    agent: RawAgents,
    runtime: RawRuntime,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawHypervisors {
    qemu: Option<RawQemu>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawQemu {
    path: String,
    kernel: String,
    initrd: String,
    machine_type: String,
    kernel_params: String,
    default_vcpus: i64,
    default_memory: i64,
    shared_fs: String,
    virtio_fs_daemon: String,
    accel: String,
    vsock: String,
    vhost_user_vsock_daemon: String,
    enable_annotations: Vec<String>,
    valid_hypervisor_paths: Vec<String>,
    valid_virtio_fs_daemon_paths: Vec<String>,
    seccompsandbox: Option<String>,
    entropy_source: Option<String>,
    cpu_features: String,
    default_maxvcpus: Option<i64>,
    default_maxmemory: Option<i64>,
    memory_slots: i64,
    virtio_fs_cache: String,
    virtio_fs_extra_args: Vec<String>,
}

impl Default for RawQemu {
    fn default() -> Self {
        Self {
            path: "/usr/bin/qemu-system-x86_64".into(),
            kernel: String::new(),
            initrd: String::new(),
            machine_type: "q35".into(),
            kernel_params: String::new(),
            default_vcpus: 1,
            default_memory: 256,
            shared_fs: "virtio-fs".into(),
            virtio_fs_daemon: "/usr/local/bin/virtiofsd".into(),
            accel: "auto".into(),
            vsock: "auto".into(),
            vhost_user_vsock_daemon: "/usr/local/bin/vhost-device-vsock".into(),
            enable_annotations: Vec::new(),
            valid_hypervisor_paths: Vec::new(),
            valid_virtio_fs_daemon_paths: Vec::new(),
            seccompsandbox: None,
            entropy_source: None,
            cpu_features: String::new(),
            default_maxvcpus: None,
            default_maxmemory: None,
            // Upstream kata's default.
            memory_slots: 10,
            virtio_fs_cache: "auto".into(),
            virtio_fs_extra_args: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawAgents {
    kata: Option<RawAgent>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawAgent {
    dial_timeout: u64,
    debug_console_enabled: bool,
}

impl Default for RawAgent {
    fn default() -> Self {
        Self {
            dial_timeout: 60,
            debug_console_enabled: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct RawRuntime {
    enable_debug: bool,
    sandbox_cgroup_only: bool,
    static_sandbox_resource_mgmt: bool,
}

impl Default for RawRuntime {
    fn default() -> Self {
        Self {
            enable_debug: false,
            // Unlike upstream's shipped file: the pod's limits and
            // RuntimeClass overhead only bound the VM when it is in the
            // pod's cgroup, which is what Kubernetes users expect.
            sandbox_cgroup_only: true,
            static_sandbox_resource_mgmt: false,
        }
    }
}

/// The runtime option `ConfigPath` that containerd 2.3's bootstrap gave
/// `start`, handed to the daemon in this variable: the Sandbox API's
/// CreateSandbox may carry no runtime options of its own.
pub const BOOTSTRAP_CONFIG_ENV: &str = "KATA_SHIM_BOOTSTRAP_CONFIG_PATH";

/// Finds the configuration file: `explicit` (runtime option), the
/// bootstrap's runtime option, `KATA_CONF_FILE`, defaults.
pub fn locate(explicit: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    if let Ok(p) = std::env::var(BOOTSTRAP_CONFIG_ENV) {
        if !p.is_empty() {
            return Ok(PathBuf::from(p));
        }
    }
    if let Ok(p) = std::env::var("KATA_CONF_FILE") {
        if !p.is_empty() {
            return Ok(PathBuf::from(p));
        }
    }
    DEFAULT_PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| {
            Error::Config(format!(
                "no configuration file: set ConfigPath or KATA_CONF_FILE, or create one of {DEFAULT_PATHS:?}"
            ))
        })
}

/// Reads and validates the configuration at `path`, with its `config.d`
/// drop-ins merged ([`dropins`]).
pub fn load(path: &Path) -> Result<Config> {
    let (text, _) = dropins::merged_text(path)?;
    parse(&text, path)
}

/// Keys this project reads, per section; others are Kata keys we do not
/// implement (or typos) and are warned about, not fatal.
pub const KNOWN_KEYS: [(&str, &[&str]); 3] = [
    (
        "hypervisor.qemu",
        &[
            "path",
            "kernel",
            "initrd",
            "machine_type",
            "kernel_params",
            "default_vcpus",
            "default_memory",
            "shared_fs",
            "virtio_fs_daemon",
            "accel",
            "vsock",
            "vhost_user_vsock_daemon",
            "enable_annotations",
            "valid_hypervisor_paths",
            "valid_virtio_fs_daemon_paths",
            "seccompsandbox",
            "entropy_source",
            "cpu_features",
            "default_maxvcpus",
            "default_maxmemory",
            "memory_slots",
            "virtio_fs_cache",
            "virtio_fs_extra_args",
        ],
    ),
    ("agent.kata", &["dial_timeout", "debug_console_enabled"]),
    (
        "runtime",
        &[
            "enable_debug",
            "sandbox_cgroup_only",
            "static_sandbox_resource_mgmt",
        ],
    ),
];

/// Keys present in `text` that this project does not implement, as `section.key`.
pub fn unknown_keys(text: &str) -> Vec<String> {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return Vec::new();
    };
    let mut unknown = Vec::new();
    for (section, known) in KNOWN_KEYS {
        let mut table = Some(&doc);
        for part in section.split('.') {
            table = table
                .and_then(|t| t.get(part))
                .and_then(toml::Value::as_table);
        }
        for key in table.into_iter().flat_map(|t| t.keys()) {
            if !known.contains(&key.as_str()) {
                unknown.push(format!("{section}.{key}"));
            }
        }
    }
    unknown
}

/// [`load`] without the read; public for the fuzz targets (`fuzz/`).
#[doc(hidden)]
// Over 80 lines on purpose: reads the file's tables key by key into validated types; the key list
// is the function.
pub fn parse(text: &str, source: &Path) -> Result<Config> {
    let raw: RawFile =
        toml::from_str(text).map_err(|e| Error::Config(format!("{}: {e}", source.display())))?;
    for key in unknown_keys(text) {
        tracing::warn!(config = %source.display(), "{key} is not implemented by this shim; ignored");
    }
    let q = raw.hypervisor.qemu.ok_or_else(|| {
        Error::Config(format!(
            "{}: no [hypervisor.qemu] section",
            source.display()
        ))
    })?;
    let machine = match q.machine_type.as_str() {
        "q35" | "" => MachineType::Q35,
        "microvm" => MachineType::Microvm,
        other => {
            return Err(Error::Config(format!(
                "hypervisor.qemu.machine_type {other:?} is not supported (q35, microvm)"
            )))
        }
    };
    let accel = match q.accel.as_str() {
        "auto" | "" => Accel::Auto,
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        other => {
            return Err(Error::Config(format!(
                "hypervisor.qemu.accel {other:?} is not one of auto, kvm, tcg"
            )))
        }
    };
    let vsock = match q.vsock.as_str() {
        "auto" | "" => VsockKind::Auto,
        "vhost" => VsockKind::Vhost,
        "vhost-user" => VsockKind::VhostUser,
        other => {
            return Err(Error::Config(format!(
                "hypervisor.qemu.vsock {other:?} is not one of auto, vhost, vhost-user"
            )))
        }
    };
    let vcpus = u32::try_from(q.default_vcpus)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| {
            Error::Config(format!(
                "hypervisor.qemu.default_vcpus {} must be ≥ 1",
                q.default_vcpus
            ))
        })?;
    let memory_mib = u32::try_from(q.default_memory)
        .ok()
        .filter(|m| *m >= 1)
        .ok_or_else(|| {
            Error::Config(format!(
                "hypervisor.qemu.default_memory {} must be ≥ 1",
                q.default_memory
            ))
        })?;
    let options = vm_options(&q, machine, vcpus, memory_mib, &HostLimits::probe())?;
    let agent = raw.agent.kata.unwrap_or_default();
    for (key, value) in [
        ("kernel", &q.kernel),
        ("initrd", &q.initrd),
        ("path", &q.path),
    ] {
        if value.is_empty() {
            return Err(Error::Config(format!("hypervisor.qemu.{key} is not set")));
        }
    }
    Ok(Config {
        source: source.to_path_buf(),
        qemu: QemuConfig {
            path: q.path.into(),
            kernel: q.kernel.into(),
            initrd: q.initrd.into(),
            machine,
            kernel_params: q.kernel_params,
            vcpus,
            memory_mib,
            pod_vcpus: 0,
            pod_memory_mib: 0,
            accel,
            vsock,
            vhost_user_vsock_daemon: q.vhost_user_vsock_daemon.into(),
            virtiofsd: q.virtio_fs_daemon.into(),
            options,
        },
        agent_dial_timeout: Duration::from_secs(agent.dial_timeout.max(1)),
        debug_console: agent.debug_console_enabled,
        debug: raw.runtime.enable_debug,
        sandbox_cgroup_only: raw.runtime.sandbox_cgroup_only,
        static_resources: raw.runtime.static_sandbox_resource_mgmt,
        annotation_policy: {
            let policy = AnnotationPolicy {
                enable_annotations: q.enable_annotations,
                valid_hypervisor_paths: q.valid_hypervisor_paths,
                valid_virtio_fs_daemon_paths: q.valid_virtio_fs_daemon_paths,
            };
            annotations::check_policy(&policy)?;
            policy
        },
    })
}

/// What the host has, for upstream's "0 = all of the host" maxima.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    pub cpus: u32,
    pub memory_mib: u32,
}

impl HostLimits {
    fn probe() -> Self {
        let cpus = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kib| u32::try_from(kib / 1024).unwrap_or(u32::MAX))
            .unwrap_or(u32::MAX);
        Self { cpus, memory_mib }
    }
}

/// `[hypervisor.qemu]`'s upstream keys for what [`VmOptions`] holds, validated.
/// Absent keys keep this project's defaults (seccomp on, `/dev/urandom`, no
/// hotplug); upstream's `0` for `default_maxvcpus` / `default_maxmemory`
/// means all of the host; values above the host are clamped, as kata does.
// Over 80 lines on purpose: one validation per [hypervisor.qemu] key, in the file's order; serde
// enums for the string-valued keys (issue 15) are what will shorten it.
fn vm_options(
    q: &RawQemu,
    machine: MachineType,
    vcpus: u32,
    memory_mib: u32,
    host: &HostLimits,
) -> Result<VmOptions> {
    let bad = |key: &str, msg: String| Error::Config(format!("hypervisor.qemu.{key} {msg}"));
    let mut o = VmOptions::default();
    if let Some(s) = &q.seccompsandbox {
        // Upstream passes the string to `-sandbox`; ours is one fixed filter
        // (on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny).
        o.seccomp = match s.split(',').next().unwrap_or("") {
            "" | "off" => Seccomp::Off,
            "on" => Seccomp::On,
            other => {
                return Err(bad(
                    "seccompsandbox",
                    format!("{other:?}: expected \"\" (off) or \"on[,...]\""),
                ))
            }
        };
    }
    if let Some(src) = &q.entropy_source {
        o.entropy_source = if src.is_empty() {
            None
        } else if Path::new(src).is_absolute() {
            Some(PathBuf::from(src))
        } else {
            return Err(bad(
                "entropy_source",
                format!("{src:?} is not an absolute path"),
            ));
        };
    }
    if q.cpu_features
        .chars()
        .any(|c| c.is_whitespace() || c == '"')
    {
        return Err(bad(
            "cpu_features",
            format!(
                "{:?} must be a comma-separated list without spaces",
                q.cpu_features
            ),
        ));
    }
    o.cpu_features = q.cpu_features.clone();
    o.shared_fs = match q.shared_fs.as_str() {
        "virtio-fs" | "" => SharedFsKind::VirtioFs,
        "virtio-9p" => SharedFsKind::Virtio9p,
        other => {
            return Err(bad(
                "shared_fs",
                format!("{other:?} is not supported (virtio-fs, virtio-9p)"),
            ))
        }
    };
    o.virtio_fs_cache = match q.virtio_fs_cache.as_str() {
        "auto" | "" => VirtioFsCache::Auto,
        "always" => VirtioFsCache::Always,
        // "none" is upstream's older spelling.
        "never" | "none" => VirtioFsCache::Never,
        "metadata" => VirtioFsCache::Metadata,
        other => {
            return Err(bad(
                "virtio_fs_cache",
                format!("{other:?} is not one of auto, always, never, metadata"),
            ))
        }
    };
    for arg in &q.virtio_fs_extra_args {
        // Ours (socket, shared dir, sandbox, cache) must stay ours.
        let name = arg.split('=').next().unwrap_or("");
        if !arg.starts_with('-')
            || [
                "--socket-path",
                "--shared-dir",
                "--sandbox",
                "--cache",
                "--fd",
            ]
            .contains(&name)
        {
            return Err(bad(
                "virtio_fs_extra_args",
                format!("{arg:?}: only --flag or --flag=value options other than socket, shared dir, sandbox and cache"),
            ));
        }
    }
    o.virtio_fs_extra_args = q.virtio_fs_extra_args.clone();
    let hotplug_asked = q
        .default_maxvcpus
        .is_some_and(|v| v != 0 && v as i128 != vcpus as i128)
        || q.default_maxmemory.is_some_and(|m| m != 0);
    if machine == MachineType::Microvm {
        if hotplug_asked {
            return Err(bad(
                "default_maxvcpus/default_maxmemory",
                "need machine_type = \"q35\": microvm has no hotplug".into(),
            ));
        }
        return Ok(o);
    }
    if let Some(max) = q.default_maxvcpus {
        let max = match u32::try_from(max) {
            Ok(0) => host.cpus,
            Ok(n) => n,
            Err(_) => return Err(bad("default_maxvcpus", format!("{max} is negative"))),
        };
        let clamped = max.min(host.cpus);
        if clamped < max {
            tracing::warn!(
                max,
                host = host.cpus,
                "default_maxvcpus above the host's CPUs: clamped"
            );
        }
        if clamped < vcpus {
            return Err(bad(
                "default_maxvcpus",
                format!("{clamped} is below default_vcpus ({vcpus})"),
            ));
        }
        o.max_vcpus = (clamped > vcpus).then_some(clamped);
    }
    if let Some(max) = q.default_maxmemory {
        let max = match u32::try_from(max) {
            Ok(0) => host.memory_mib,
            Ok(n) => n,
            Err(_) => return Err(bad("default_maxmemory", format!("{max} is negative"))),
        };
        let clamped = max.min(host.memory_mib);
        if clamped < max {
            tracing::warn!(
                max,
                host = host.memory_mib,
                "default_maxmemory above the host's memory: clamped"
            );
        }
        let slots = u32::try_from(q.memory_slots)
            .ok()
            .filter(|s| (1..=256).contains(s))
            .ok_or_else(|| {
                bad(
                    "memory_slots",
                    format!("{} is not between 1 and 256", q.memory_slots),
                )
            })?;
        if clamped > memory_mib {
            o.memory_hotplug = Some(MemoryHotplug {
                slots,
                max_mib: clamped,
            });
        } else if clamped < memory_mib {
            return Err(bad(
                "default_maxmemory",
                format!("{clamped} MiB is below default_memory ({memory_mib} MiB)"),
            ));
        }
    }
    Ok(o)
}

impl Config {
    /// This configuration with the pod's allowed kata annotations applied.
    pub fn with_annotations(
        &self,
        pod: &std::collections::HashMap<String, String>,
    ) -> Result<Config> {
        let mut o = Overrides::default();
        annotations::apply(pod, &self.annotation_policy, &mut o)?;
        let mut c = self.clone();
        if let Some(p) = o.path {
            c.qemu.path = p;
        }
        if let Some(k) = o.kernel_params {
            c.qemu.kernel_params = [c.qemu.kernel_params.as_str(), k.as_str()]
                .join(" ")
                .trim()
                .to_owned();
        }
        if let Some(v) = o.default_vcpus {
            c.qemu.vcpus = v;
        }
        if let Some(m) = o.default_memory {
            c.qemu.memory_mib = m;
        }
        if let Some(d) = o.virtio_fs_daemon {
            c.qemu.virtiofsd = d;
        }
        if let Some(m) = o.machine_type {
            c.qemu.machine = match m.as_str() {
                "q35" => MachineType::Q35,
                "microvm" => MachineType::Microvm,
                other => {
                    return Err(Error::InvalidArgument(format!(
                        "annotation machine_type {other:?} is not supported (q35, microvm)"
                    )))
                }
            };
            if c.qemu.machine == MachineType::Microvm {
                // microvm has no hotplug: the pod asked for it, it loses the room.
                c.qemu.options.max_vcpus = None;
                c.qemu.options.memory_hotplug = None;
            }
        }
        // Annotations may raise the boot size: keep the hotplug room above it.
        if let Some(max) = c.qemu.options.max_vcpus {
            c.qemu.options.max_vcpus = Some(max.max(c.qemu.vcpus));
        }
        if let Some(h) = c.qemu.options.memory_hotplug.as_mut() {
            if h.max_mib <= c.qemu.memory_mib {
                c.qemu.options.memory_hotplug = None;
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
