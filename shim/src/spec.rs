//! Converts the bundle's OCI spec (config.json) into the agent's protobuf spec.
//!
//! Host paths mean nothing in the guest: the rootfs becomes the container's
//! directory on the virtio-fs share, the network namespace is the VM's own,
//! and kernel filesystems are created by the agent, not shared.

use std::path::Path;

use oci_spec::runtime::{self as oci, LinuxNamespaceType};
use protocols::oci as grpc;
use serde::Serialize;

use crate::annotations::cri;
use crate::error::{Error, Result};

/// Where the guest mounts the sandbox share (upstream kata's path).
pub use protocols::share::GUEST_SHARED_DIR;

/// The rootfs of container `cid` as the guest sees it.
pub fn guest_rootfs(cid: &str) -> String {
    format!("{GUEST_SHARED_DIR}/{cid}/rootfs")
}

/// A host path the container bind-mounts (volume, /etc/hosts, ...): the
/// shim bind-mounts it under the container's directory on the share, where
/// the guest finds it as `guest_source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBind {
    pub source: std::path::PathBuf,
    /// Path relative to the container's directory on the share.
    pub share_path: String,
    /// The spec's mount options (`ro`, `rbind`, `nosuid`, ...): the bind is
    /// made with them on the host, so `ro` holds against the guest too.
    pub options: Vec<String>,
}

/// Longest file-name part of a bind's name on the share.
const SHARE_NAME_MAX: usize = 64;

/// The name a bind gets on the share: its index, then the source's file
/// name with anything but `[A-Za-z0-9._-]` dropped (so no name on the share
/// needs escaping in mountinfo or logs), bounded in length.
fn share_name(index: usize, source: &Path) -> String {
    let name: String = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(SHARE_NAME_MAX)
        .collect();
    format!("mounts/{index}-{name}")
}

/// Filesystem types the guest creates itself; everything else must be shared.
const KERNEL_FS: [&str; 7] = [
    "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup", "cgroup2",
];

/// Reads and parses `<bundle>/config.json`.
pub async fn load(bundle: &Path) -> Result<oci::Spec> {
    let path = bundle.join("config.json");
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        Error::InvalidArgument(format!("{} is not a valid OCI spec: {e}", path.display()))
    })
}

/// Serializes a value to the string form the OCI JSON uses (e.g. "CAP_CHOWN").
fn json_strings<T: Serialize>(v: &T) -> Vec<String> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::Array(items)) => items
            .into_iter()
            .filter_map(|i| i.as_str().map(str::to_owned))
            .collect(),
        Ok(serde_json::Value::String(s)) => vec![s],
        _ => Vec::new(),
    }
}

pub fn process(p: &oci::Process) -> Result<grpc::Process> {
    let args = p.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(Error::InvalidArgument("process.args is empty".into()));
    }
    let cwd = p.cwd().to_string_lossy().into_owned();
    if !cwd.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "process.cwd {cwd:?} is not absolute"
        )));
    }
    let user = p.user();
    let mut out = grpc::Process {
        Terminal: p.terminal().unwrap_or(false),
        Args: args,
        Env: p.env().clone().unwrap_or_default(),
        Cwd: cwd,
        NoNewPrivileges: p.no_new_privileges().unwrap_or(false),
        OOMScoreAdj: i64::from(p.oom_score_adj().unwrap_or(0)),
        ApparmorProfile: p.apparmor_profile().clone().unwrap_or_default(),
        SelinuxLabel: p.selinux_label().clone().unwrap_or_default(),
        ..Default::default()
    };
    out.User = protocols::protobuf::MessageField::some(grpc::User {
        UID: user.uid(),
        GID: user.gid(),
        AdditionalGids: user.additional_gids().clone().unwrap_or_default(),
        Username: user.username().clone().unwrap_or_default(),
        ..Default::default()
    });
    if let Some(size) = p.console_size() {
        out.ConsoleSize = protocols::protobuf::MessageField::some(grpc::Box {
            Height: u32::try_from(size.height()).unwrap_or(u32::MAX),
            Width: u32::try_from(size.width()).unwrap_or(u32::MAX),
            ..Default::default()
        });
    }
    if let Some(caps) = p.capabilities() {
        out.Capabilities = protocols::protobuf::MessageField::some(grpc::LinuxCapabilities {
            Bounding: caps
                .bounding()
                .as_ref()
                .map(json_strings)
                .unwrap_or_default(),
            Effective: caps
                .effective()
                .as_ref()
                .map(json_strings)
                .unwrap_or_default(),
            Inheritable: caps
                .inheritable()
                .as_ref()
                .map(json_strings)
                .unwrap_or_default(),
            Permitted: caps
                .permitted()
                .as_ref()
                .map(json_strings)
                .unwrap_or_default(),
            Ambient: caps
                .ambient()
                .as_ref()
                .map(json_strings)
                .unwrap_or_default(),
            ..Default::default()
        });
    }
    for r in p.rlimits().iter().flatten() {
        out.Rlimits.push(grpc::POSIXRlimit {
            Type: json_strings(&r.typ()).pop().unwrap_or_default(),
            Hard: r.hard(),
            Soft: r.soft(),
            ..Default::default()
        });
    }
    Ok(out)
}

fn namespace_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mount",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "network",
        LinuxNamespaceType::Time => "time",
    }
}

/// The guest does not map ids into a user namespace (Kubernetes'
/// `hostUsers: false`): a container that asks for one is refused rather than
/// run with host-root-equivalent ids in the VM.
fn refuse_user_namespace(linux: &oci::Linux) -> Result<()> {
    let user_ns = linux
        .namespaces()
        .iter()
        .flatten()
        .any(|n| n.typ() == LinuxNamespaceType::User);
    let mapped = linux.uid_mappings().as_ref().is_some_and(|m| !m.is_empty())
        || linux.gid_mappings().as_ref().is_some_and(|m| !m.is_empty());
    if user_ns || mapped {
        return Err(Error::InvalidArgument(
            "user namespaces (uid/gid mappings, hostUsers: false) are not supported by this runtime"
                .into(),
        ));
    }
    Ok(())
}

/// The container joins a PID namespace by path (CRI's app containers of a
/// `shareProcessNamespace` pod join the sandbox container's): in the guest
/// it joins the pod's namespace, owned by the pod's first container.
pub fn shares_pod_pid_ns(spec: &oci::Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|all| {
            all.iter()
                .any(|ns| ns.typ() == LinuxNamespaceType::Pid && ns.path().is_some())
        })
}

fn is_bind(typ: &str, options: &[String]) -> bool {
    typ == "bind" || options.iter().any(|o| o == "bind" || o == "rbind")
}

/// The agent's spec for container `cid`, whose rootfs is on the share,
/// and the host paths that must be shared for its bind mounts.
// Over 80 lines on purpose: the OCI -> agent spec conversion field by field, in the spec's order;
// each part is a few lines.
pub fn to_agent_spec(spec: &oci::Spec, cid: &str) -> Result<(grpc::Spec, Vec<HostBind>)> {
    let mut binds = Vec::new();
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("OCI spec has no process".into()))?;
    let mut out = grpc::Spec {
        Version: spec.version().clone(),
        Hostname: spec.hostname().clone().unwrap_or_default(),
        Annotations: spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        ..Default::default()
    };
    out.Process = protocols::protobuf::MessageField::some(self::process(process)?);
    out.Root = protocols::protobuf::MessageField::some(grpc::Root {
        Path: guest_rootfs(cid),
        Readonly: spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false),
        ..Default::default()
    });
    for m in spec.mounts().iter().flatten() {
        let typ = m.typ().clone().unwrap_or_default();
        let options = m.options().clone().unwrap_or_default();
        if is_bind(&typ, &options) {
            let Some(source) = m.source().clone().filter(|s| s.is_absolute()) else {
                return Err(Error::InvalidArgument(format!(
                    "bind mount to {} has no absolute source",
                    m.destination().display()
                )));
            };
            let share_path = share_name(binds.len(), &source);
            out.Mounts.push(grpc::Mount {
                destination: m.destination().to_string_lossy().into_owned(),
                source: format!("{GUEST_SHARED_DIR}/{cid}/{share_path}"),
                type_: "bind".into(),
                options: options.clone(),
                ..Default::default()
            });
            binds.push(HostBind {
                source,
                share_path,
                options,
            });
            continue;
        }
        if !KERNEL_FS.contains(&typ.as_str()) {
            tracing::warn!(
                container = cid,
                destination = %m.destination().display(),
                "mount of type {typ:?} is not supported in the guest; skipped"
            );
            continue;
        }
        out.Mounts.push(grpc::Mount {
            destination: m.destination().to_string_lossy().into_owned(),
            source: m
                .source()
                .as_ref()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| typ.clone()),
            type_: typ,
            options: m.options().clone().unwrap_or_default(),
            ..Default::default()
        });
    }
    if let Some(linux) = spec.linux() {
        let mut l = grpc::Linux {
            CgroupsPath: linux
                .cgroups_path()
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            MaskedPaths: linux.masked_paths().clone().unwrap_or_default(),
            ReadonlyPaths: linux.readonly_paths().clone().unwrap_or_default(),
            Sysctl: linux
                .sysctl()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            RootfsPropagation: linux.rootfs_propagation().clone().unwrap_or_default(),
            ..Default::default()
        };
        if let Some(profile) = linux.seccomp() {
            l.Seccomp = protocols::protobuf::MessageField::some(crate::seccomp::to_agent(profile)?);
        }
        refuse_user_namespace(linux)?;
        // Namespaces as Kata's runtimes send them. Networking is always the
        // VM's. The pid entry never goes: the agent creates the container's
        // PID namespace, or joins the pod's when CreateContainer says
        // `sandbox_pidns` (see [`shares_pod_pid_ns`]); a host path there
        // made upstream's agent fail (`failed to join pidns`) and ours run
        // the container in the VM's own namespace, next to the agent. Time
        // namespaces are not supported in the guest. The VM is the pod: a
        // namespace the spec joins by path (CRI's app containers join the
        // pause container's) is the VM's own in the guest, and so are the
        // pod-wide UTS and IPC namespaces of the CRI sandbox container (its
        // hostname goes to CreateSandbox). A cgroup namespace is the
        // container's own: there is nothing of the host's to join.
        let cri_sandbox = spec
            .annotations()
            .as_ref()
            .and_then(|a| a.get(cri::CONTAINER_TYPE))
            .is_some_and(|t| t == cri::SANDBOX);
        for ns in linux.namespaces().iter().flatten() {
            let typ = ns.typ();
            let pod_wide = matches!(typ, LinuxNamespaceType::Uts | LinuxNamespaceType::Ipc);
            let dropped = matches!(
                typ,
                LinuxNamespaceType::Network | LinuxNamespaceType::Pid | LinuxNamespaceType::Time
            );
            let joined = ns.path().is_some() && typ != LinuxNamespaceType::Cgroup;
            if dropped || joined || (cri_sandbox && pod_wide) {
                continue;
            }
            l.Namespaces.push(grpc::LinuxNamespace {
                Type: namespace_name(typ).into(),
                Path: String::new(),
                ..Default::default()
            });
        }
        if let Some(r) = linux.resources() {
            l.Resources =
                protocols::protobuf::MessageField::some(crate::oci_resources::oci_to_agent(r));
        }
        out.Linux = protocols::protobuf::MessageField::some(l);
    }
    Ok((out, binds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> oci::Spec {
        serde_json::from_value(json).expect("valid spec")
    }

    #[test]
    fn converts_process_root_and_kernel_mounts() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh", "-c", "echo hi"], "cwd": "/work", "env": ["A=1"],
                        "user": {"uid": 1000, "gid": 100},
                        "capabilities": {"bounding": ["CAP_CHOWN"]}},
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "box",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": "/host/data", "options": ["rbind"]}
            ],
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}, {"type": "mount"}],
                      "resources": {"memory": {"limit": 33554432}}}
        }));
        let (g, binds) = to_agent_spec(&s, "c1").expect("converts");
        let p = g.Process.as_ref().expect("process");
        assert_eq!(p.Args, vec!["sh", "-c", "echo hi"]);
        assert_eq!(p.Cwd, "/work");
        assert_eq!(p.User.UID, 1000);
        assert_eq!(p.Capabilities.Bounding, vec!["CAP_CHOWN"]);
        assert_eq!(
            g.Root.Path,
            "/run/kata-containers/shared/containers/c1/rootfs"
        );
        assert!(g.Root.Readonly);
        assert_eq!(g.Hostname, "box");
        assert_eq!(g.Mounts.len(), 2);
        assert_eq!(g.Mounts[0].type_, "proc");
        // The host bind reaches the guest through the share.
        assert_eq!(
            g.Mounts[1].source,
            "/run/kata-containers/shared/containers/c1/mounts/0-data"
        );
        assert_eq!(g.Mounts[1].destination, "/data");
        assert_eq!(
            binds,
            vec![HostBind {
                source: "/host/data".into(),
                share_path: "mounts/0-data".into(),
                options: vec!["rbind".into()],
            }]
        );
        let ns: Vec<_> = g.Linux.Namespaces.iter().map(|n| n.Type.as_str()).collect();
        assert_eq!(ns, vec!["mount"], "pid is the agent's to decide");
        assert!(!shares_pod_pid_ns(&s));
        assert_eq!(g.Linux.Resources.Memory.Limit, 33554432);
    }

    #[test]
    fn pod_namespaces_are_the_vms() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["pause"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": {"io.kubernetes.cri.container-type": "sandbox"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "uts"}, {"type": "ipc"}, {"type": "mount"}]}
        }));
        let (g, _) = to_agent_spec(&s, "pod").expect("converts");
        let ns: Vec<_> = g.Linux.Namespaces.iter().map(|n| n.Type.as_str()).collect();
        assert_eq!(ns, vec!["mount"], "sandbox's uts/ipc are the VM's");
        assert!(!shares_pod_pid_ns(&s), "the sandbox owns the pod's pid ns");
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["app"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "uts", "path": "/proc/42/ns/uts"},
                                     {"type": "ipc", "path": "/proc/42/ns/ipc"}, {"type": "mount"}]}
        }));
        let (g, _) = to_agent_spec(&s, "app").expect("converts");
        let ns: Vec<_> = g.Linux.Namespaces.iter().map(|n| n.Type.as_str()).collect();
        assert_eq!(ns, vec!["mount"], "joined namespaces are the VM's");
        assert!(!shares_pod_pid_ns(&s), "a pid namespace of its own");
    }

    /// shareProcessNamespace: the app container joins the sandbox's PID
    /// namespace by a host path; the agent is told `sandbox_pidns` instead
    /// and gets no pid entry, no network, no time namespace; a cgroup
    /// namespace stays the container's own.
    #[test]
    fn a_shared_pid_namespace_is_a_flag_not_a_path() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["app"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": {"io.kubernetes.cri.container-type": "container"},
            "linux": {"namespaces": [{"type": "pid", "path": "/proc/4242/ns/pid"},
                                     {"type": "network", "path": "/var/run/netns/cni-1"},
                                     {"type": "ipc", "path": "/proc/4242/ns/ipc"},
                                     {"type": "time"},
                                     {"type": "cgroup", "path": "/proc/4242/ns/cgroup"},
                                     {"type": "mount"}]}
        }));
        assert!(shares_pod_pid_ns(&s));
        let (g, _) = to_agent_spec(&s, "app").expect("converts");
        let ns: Vec<_> = g
            .Linux
            .Namespaces
            .iter()
            .map(|n| (n.Type.as_str(), n.Path.as_str()))
            .collect();
        assert_eq!(ns, vec![("cgroup", ""), ("mount", "")]);
        // Host PID (no pid entry at all): not shared with the pod either.
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["app"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "mount"}]}
        }));
        assert!(!shares_pod_pid_ns(&s));
    }

    #[test]
    fn seccomp_reaches_the_agent_and_user_namespaces_are_refused() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
                                  "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}}
        }));
        let (g, _) = to_agent_spec(&s, "c").expect("converts");
        assert_eq!(g.Linux.Seccomp.DefaultAction, "SCMP_ACT_ERRNO");
        assert_eq!(g.Linux.Seccomp.Syscalls[0].Names, vec!["read"]);
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "user"}],
                      "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}
        }));
        let e = to_agent_spec(&s, "c").expect_err("refused");
        assert!(
            matches!(e, Error::InvalidArgument(ref m) if m.contains("user namespaces")),
            "{e}"
        );
    }

    #[test]
    fn share_names_need_no_escaping_and_stay_short() {
        assert_eq!(
            share_name(3, Path::new("/v/a b\nc\\d.txt")),
            "mounts/3-abcd.txt"
        );
        assert_eq!(share_name(0, Path::new("/")), "mounts/0-");
        assert_eq!(share_name(1, Path::new("/..")), "mounts/1-");
        let long = format!("/{}", "x".repeat(5000));
        assert_eq!(
            share_name(9, Path::new(&long)).len(),
            "mounts/9-".len() + 64
        );
    }

    #[test]
    fn rejects_spec_without_process_or_with_relative_cwd() {
        let s = spec(serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}));
        assert!(matches!(
            to_agent_spec(&s, "c"),
            Err(Error::InvalidArgument(_))
        ));
        let s = spec(serde_json::json!({"ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "rel", "user": {"uid": 0, "gid": 0}}}));
        let err = to_agent_spec(&s, "c").unwrap_err();
        assert!(err.to_string().contains("cwd"), "{err}");
    }
}
