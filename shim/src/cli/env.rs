//! `containerd-shim-kata-v2 env`: the configuration a sandbox would get,
//! resolved: which file, which `config.d` drop-ins, every effective value
//! (defaults included) under its `configuration.toml` key, the accelerator
//! and vsock transport this host resolves them to, and which pod annotations
//! may override what. TOML by default, `--json` for tools.

use std::path::{Path, PathBuf};

use hypervisor::accel::{self, HostProbe, ResolvedAccel, ResolvedVsock};
use hypervisor::{Accel, MachineType, Seccomp, SharedFsKind, VirtioFsCache, VsockKind};
use serde::Serialize;

use crate::annotations::HYPERVISOR_PREFIX;
use crate::config::Config;

/// The `io.katacontainers.config.hypervisor.*` annotations this shim applies.
pub const IMPLEMENTED_ANNOTATIONS: [&str; 6] = [
    "path",
    "virtio_fs_daemon",
    "kernel_params",
    "default_vcpus",
    "default_memory",
    "machine_type",
];

#[derive(Debug, Serialize)]
pub struct Env {
    pub config: ConfigSource,
    pub hypervisor: Hypervisors,
    pub agent: Agents,
    pub runtime: Runtime,
    pub host: Host,
    pub annotations: Annotations,
}

#[derive(Debug, Serialize)]
pub struct ConfigSource {
    pub path: PathBuf,
    /// `config.d` files merged over it, in order (later wins).
    pub drop_ins: Vec<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Hypervisors {
    pub qemu: Qemu,
}

/// `[hypervisor.qemu]`, every key with its effective value.
#[derive(Debug, Serialize)]
pub struct Qemu {
    pub path: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub machine_type: &'static str,
    pub kernel_params: String,
    pub default_vcpus: u32,
    pub default_memory: u32,
    pub shared_fs: &'static str,
    pub virtio_fs_daemon: PathBuf,
    pub virtio_fs_cache: &'static str,
    pub virtio_fs_extra_args: Vec<String>,
    pub seccompsandbox: &'static str,
    /// Empty: no virtio-rng device.
    pub entropy_source: String,
    pub cpu_features: String,
    /// 0: no vCPU hotplug room.
    pub default_maxvcpus: u32,
    /// 0: no memory hotplug room.
    pub default_maxmemory: u32,
    pub memory_slots: u32,
    pub accel: &'static str,
    pub vsock: &'static str,
    pub vhost_user_vsock_daemon: PathBuf,
    pub enable_annotations: Vec<String>,
    pub valid_hypervisor_paths: Vec<String>,
    pub valid_virtio_fs_daemon_paths: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Agents {
    pub kata: Agent,
}

#[derive(Debug, Serialize)]
pub struct Agent {
    pub dial_timeout: u64,
    pub debug_console_enabled: bool,
}

#[derive(Debug, Serialize)]
pub struct Runtime {
    pub enable_debug: bool,
    pub sandbox_cgroup_only: bool,
    pub static_sandbox_resource_mgmt: bool,
}

/// What `auto` settings resolve to on this host.
#[derive(Debug, Serialize)]
pub struct Host {
    pub accel: String,
    pub accel_reason: String,
    pub vsock: String,
}

#[derive(Debug, Serialize)]
pub struct Annotations {
    pub prefix: &'static str,
    /// Annotation names (after the prefix) a pod may set here.
    pub allowed: Vec<String>,
    /// Implemented but not enabled by `enable_annotations`.
    pub refused: Vec<String>,
}

fn machine(m: MachineType) -> &'static str {
    match m {
        MachineType::Q35 => "q35",
        MachineType::Microvm => "microvm",
    }
}

/// Builds the report for `config`, read from `path`, on the host `probe` describes.
pub fn resolve(config: &Config, path: &Path, drop_ins: Vec<PathBuf>, probe: &HostProbe) -> Env {
    let q = &config.qemu;
    let o = &q.options;
    let (accel, accel_reason) = match accel::resolve_accel(q.accel, probe) {
        Ok((ResolvedAccel::Kvm, why)) => ("kvm".to_owned(), why),
        Ok((ResolvedAccel::Tcg, why)) => ("tcg".to_owned(), why),
        Err(e) => ("none".to_owned(), e.to_string()),
    };
    let vsock = match accel::resolve_vsock(q.vsock, probe) {
        Ok(ResolvedVsock::Vhost) => "vhost".to_owned(),
        Ok(ResolvedVsock::VhostUser) => "vhost-user".to_owned(),
        Err(e) => format!("none: {e}"),
    };
    let policy = &config.annotation_policy;
    let enabled = |name: &str| {
        policy
            .enable_annotations
            .iter()
            .any(|a| regex::Regex::new(&format!("^(?:{a})$")).is_ok_and(|r| r.is_match(name)))
    };
    let (allowed, refused) = IMPLEMENTED_ANNOTATIONS
        .iter()
        .map(|a| a.to_string())
        .partition(|a| enabled(a));
    Env {
        config: ConfigSource {
            path: path.to_path_buf(),
            drop_ins,
        },
        hypervisor: Hypervisors {
            qemu: Qemu {
                path: q.path.clone(),
                kernel: q.kernel.clone(),
                initrd: q.initrd.clone(),
                machine_type: machine(q.machine),
                kernel_params: q.kernel_params.clone(),
                default_vcpus: q.vcpus,
                default_memory: q.memory_mib,
                shared_fs: match o.shared_fs {
                    SharedFsKind::VirtioFs => "virtio-fs",
                    SharedFsKind::Virtio9p => "virtio-9p",
                },
                virtio_fs_daemon: q.virtiofsd.clone(),
                virtio_fs_cache: match o.virtio_fs_cache {
                    VirtioFsCache::Auto => "auto",
                    VirtioFsCache::Always => "always",
                    VirtioFsCache::Never => "never",
                    VirtioFsCache::Metadata => "metadata",
                },
                virtio_fs_extra_args: o.virtio_fs_extra_args.clone(),
                seccompsandbox: match o.seccomp {
                    Seccomp::On => "on",
                    Seccomp::Off => "",
                },
                entropy_source: o
                    .entropy_source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                cpu_features: o.cpu_features.clone(),
                default_maxvcpus: o.max_vcpus.unwrap_or(0),
                default_maxmemory: o.memory_hotplug.map(|h| h.max_mib).unwrap_or(0),
                memory_slots: o.memory_hotplug.map(|h| h.slots).unwrap_or(0),
                accel: match q.accel {
                    Accel::Auto => "auto",
                    Accel::Kvm => "kvm",
                    Accel::Tcg => "tcg",
                },
                vsock: match q.vsock {
                    VsockKind::Auto => "auto",
                    VsockKind::Vhost => "vhost",
                    VsockKind::VhostUser => "vhost-user",
                },
                vhost_user_vsock_daemon: q.vhost_user_vsock_daemon.clone(),
                enable_annotations: policy.enable_annotations.clone(),
                valid_hypervisor_paths: policy.valid_hypervisor_paths.clone(),
                valid_virtio_fs_daemon_paths: policy.valid_virtio_fs_daemon_paths.clone(),
            },
        },
        agent: Agents {
            kata: Agent {
                dial_timeout: config.agent_dial_timeout.as_secs(),
                debug_console_enabled: config.debug_console,
            },
        },
        runtime: Runtime {
            enable_debug: config.debug,
            sandbox_cgroup_only: config.sandbox_cgroup_only,
            static_sandbox_resource_mgmt: config.static_resources,
        },
        host: Host {
            accel,
            accel_reason,
            vsock,
        },
        annotations: Annotations {
            prefix: HYPERVISOR_PREFIX,
            allowed,
            refused,
        },
    }
}

impl Env {
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_without_anything(dir: &Path) -> HostProbe {
        HostProbe {
            kvm_device: dir.join("kvm"),
            pvm_module: dir.join("kvm_pvm"),
            vhost_vsock_device: dir.join("vhost-vsock"),
        }
    }

    #[test]
    fn reports_sources_effective_values_and_annotations() {
        let d = tempfile::tempdir().expect("tempdir");
        let main = d.path().join("configuration.toml");
        std::fs::write(
            &main,
            "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\nenable_annotations = [\"default_.*\"]\n",
        )
        .expect("main");
        std::fs::create_dir(d.path().join("config.d")).expect("dir");
        let drop_in = d.path().join("config.d/10-debug.toml");
        std::fs::write(&drop_in, "[agent.kata]\ndebug_console_enabled = true\n").expect("drop-in");
        let config = crate::config::load(&main).expect("config");
        let drop_ins = crate::config::dropins::list(&main).expect("list");
        let env = resolve(&config, &main, drop_ins, &probe_without_anything(d.path()));
        let t: toml::Table = env.to_toml().expect("toml").parse().expect("parses back");
        assert_eq!(t["config"]["drop_ins"][0].as_str(), drop_in.to_str());
        let q = &t["hypervisor"]["qemu"];
        // Defaults show up with their values, not as absent keys.
        assert_eq!(q["default_memory"].as_integer(), Some(256));
        assert_eq!(q["machine_type"].as_str(), Some("q35"));
        assert_eq!(q["seccompsandbox"].as_str(), Some("on"));
        assert_eq!(
            t["agent"]["kata"]["debug_console_enabled"].as_bool(),
            Some(true)
        );
        assert_eq!(t["host"]["accel"].as_str(), Some("tcg"));
        assert_eq!(t["host"]["vsock"].as_str(), Some("vhost-user"));
        let allowed: Vec<_> = t["annotations"]["allowed"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        assert_eq!(allowed, ["default_vcpus", "default_memory"]);
        let j: serde_json::Value =
            serde_json::from_str(&env.to_json().expect("json")).expect("json");
        assert_eq!(j["hypervisor"]["qemu"]["kernel"], "/k");
    }

    #[test]
    fn every_configuration_key_is_reported() {
        let d = tempfile::tempdir().expect("tempdir");
        let main = d.path().join("configuration.toml");
        std::fs::write(
            &main,
            "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n",
        )
        .expect("w");
        let config = crate::config::load(&main).expect("config");
        let env = resolve(
            &config,
            &main,
            Vec::new(),
            &probe_without_anything(d.path()),
        );
        let t: toml::Table = env.to_toml().expect("toml").parse().expect("toml");
        for (section, keys) in crate::config::KNOWN_KEYS {
            let mut table = &t;
            for part in section.split('.') {
                table = table[part].as_table().expect(section);
            }
            for key in keys {
                assert!(table.contains_key(*key), "env lacks {section}.{key}");
            }
        }
    }

    #[test]
    fn implemented_annotations_are_accepted_when_enabled() {
        let policy = crate::annotations::AnnotationPolicy {
            enable_annotations: vec![".*".into()],
            valid_hypervisor_paths: vec!["/usr/bin/*".into()],
            valid_virtio_fs_daemon_paths: vec!["/usr/bin/*".into()],
        };
        for name in IMPLEMENTED_ANNOTATIONS {
            let value = match name {
                "path" | "virtio_fs_daemon" => "/usr/bin/x",
                "machine_type" => "q35",
                "kernel_params" => "quiet",
                _ => "512",
            };
            let pod = [(format!("{HYPERVISOR_PREFIX}{name}"), value.to_owned())].into();
            let mut o = crate::annotations::Overrides::default();
            crate::annotations::apply(&pod, &policy, &mut o).expect(name);
            assert_ne!(o, Default::default(), "{name} changed nothing");
        }
    }
}
