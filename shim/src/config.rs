//! Kata's `configuration.toml`, parsed once into validated types.
//!
//! Lookup order: containerd's runtime option `ConfigPath`, then `KATA_CONF_FILE`,
//! then the default paths.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hypervisor::{Accel, MachineType, VsockKind};
use serde::Deserialize;

use crate::annotations::{self, AnnotationPolicy, Overrides};
use crate::error::{Error, Result};

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
    pub debug: bool,
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
    pub accel: Accel,
    pub vsock: VsockKind,
    pub vhost_user_vsock_daemon: PathBuf,
    pub virtiofsd: PathBuf,
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
}

impl Default for RawAgent {
    fn default() -> Self {
        Self { dial_timeout: 60 }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRuntime {
    enable_debug: bool,
}

/// Finds the configuration file: `explicit` (runtime option), `KATA_CONF_FILE`, defaults.
pub fn locate(explicit: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = explicit.filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
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

/// Reads and validates the configuration at `path`.
pub fn load(path: &Path) -> Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
    parse(&text, path)
}

/// Keys this project reads, per section; others are Kata keys we do not
/// implement (or typos) and are warned about, not fatal.
const KNOWN_KEYS: [(&str, &[&str]); 3] = [
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
        ],
    ),
    ("agent.kata", &["dial_timeout"]),
    ("runtime", &["enable_debug"]),
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

fn parse(text: &str, source: &Path) -> Result<Config> {
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
    if q.shared_fs != "virtio-fs" {
        return Err(Error::Config(format!(
            "hypervisor.qemu.shared_fs {:?} is not supported (virtio-fs)",
            q.shared_fs
        )));
    }
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
            accel,
            vsock,
            vhost_user_vsock_daemon: q.vhost_user_vsock_daemon.into(),
            virtiofsd: q.virtio_fs_daemon.into(),
        },
        agent_dial_timeout: Duration::from_secs(
            raw.agent.kata.unwrap_or_default().dial_timeout.max(1),
        ),
        debug: raw.runtime.enable_debug,
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
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Config> {
        parse(s, Path::new("test.toml"))
    }

    #[test]
    fn parses_the_shipped_template() {
        let text = include_str!("../configuration.toml.in")
            .replace("@ASSETS@", "/a")
            .replace("@BINDIR@", "/b");
        let c = parse_str(&text).expect("template parses");
        assert_eq!(c.qemu.kernel, PathBuf::from("/a/vmlinux"));
        assert_eq!(c.qemu.machine, MachineType::Q35);
        assert_eq!(c.qemu.accel, Accel::Auto);
        assert_eq!(c.qemu.virtiofsd, PathBuf::from("/b/virtiofsd"));
        assert_eq!(c.agent_dial_timeout, Duration::from_secs(60));
    }

    #[test]
    fn rejects_bad_values_with_the_key_named() {
        let base = "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n";
        let err = parse_str(&format!("{base}machine_type = \"pc-i440fx\"")).unwrap_err();
        assert!(err.to_string().contains("machine_type"), "{err}");
        let err = parse_str(&format!("{base}default_vcpus = 0")).unwrap_err();
        assert!(err.to_string().contains("default_vcpus"), "{err}");
        let err = parse_str(&format!("{base}accel = \"hvf\"")).unwrap_err();
        assert!(err.to_string().contains("accel"), "{err}");
        let err = parse_str("[hypervisor.qemu]\ninitrd = \"/i\"").unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
        let err = parse_str("not toml [").unwrap_err();
        assert!(err.to_string().contains("test.toml"), "{err}");
    }

    #[test]
    fn pod_annotations_apply_only_where_enabled() {
        let c = parse_str(
            "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\nkernel_params = \"a=1\"\nenable_annotations = [\"default_vcpus\", \"kernel_params\"]\n",
        )
        .expect("parses");
        let pod: std::collections::HashMap<String, String> = [
            ("io.katacontainers.config.hypervisor.default_vcpus", "2"),
            ("io.katacontainers.config.hypervisor.kernel_params", "b=2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let applied = c.with_annotations(&pod).expect("allowed");
        assert_eq!(applied.qemu.vcpus, 2);
        assert_eq!(applied.qemu.kernel_params, "a=1 b=2");
        let bad: std::collections::HashMap<String, String> = [(
            "io.katacontainers.config.hypervisor.path".to_owned(),
            "/tmp/evil".to_owned(),
        )]
        .into();
        let err = c.with_annotations(&bad).expect_err("not enabled");
        assert!(err.to_string().contains("path"), "{err}");
    }

    #[test]
    fn unknown_keys_are_listed_for_warning() {
        let text = "[hypervisor.qemu]\nkernel = \"/k\"\nblock_device_driver = \"x\"\n[runtime]\nsandbox_cgroup_only = true\n";
        assert_eq!(
            unknown_keys(text),
            vec![
                "hypervisor.qemu.block_device_driver",
                "runtime.sandbox_cgroup_only"
            ]
        );
    }

    #[test]
    fn unknown_kata_keys_are_accepted() {
        let c = parse_str(
            "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\nblock_device_driver = \"virtio-scsi\"\n[runtime]\nsandbox_cgroup_only = true\n",
        );
        assert!(c.is_ok());
    }
}
