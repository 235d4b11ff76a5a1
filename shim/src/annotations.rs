//! Kata's `io.katacontainers.config.hypervisor.*` annotations: per-pod
//! overrides of the configuration, allowed only where the configuration says.
//!
//! Rules (upstream kata's, made stricter where noted):
//! - an annotation under the hypervisor prefix must be enabled by
//!   `enable_annotations` (regexes matched against the part after the prefix;
//!   upstream matches unanchored, here the WHOLE name must match, so `kernel`
//!   does not enable `kernel_params`), else the pod is refused;
//! - a binary path (`path`, `virtio_fs_daemon`) must match one of the
//!   corresponding `valid_*_paths` globs (`*`, `?`, `[...]`, none crossing a
//!   `/`); an empty list refuses every value;
//! - asset paths without such a list here (`kernel`, `image`, `initrd`,
//!   `firmware`, `jailer_path`, …) are refused even when enabled;
//! - other enabled annotations, and other `io.katacontainers.*` keys, are not
//!   implemented: logged and ignored.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use regex::Regex;

use crate::error::{Error, Result};

/// The annotations containerd's CRI plugin puts on every container it
/// creates: how the shim learns which pod a container belongs to and the
/// pod's size. One place for the keys, whoever reads them.
pub mod cri {
    /// The pod (sandbox container) a container belongs to.
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    /// [`SANDBOX`] for the pod's sandbox (pause) container, [`CONTAINER`] for the others.
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const SANDBOX: &str = "sandbox";
    pub const CONTAINER: &str = "container";
    /// The pod's CPU period and quota (sum of its containers' limits).
    pub const SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
    pub const SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
    /// The pod's memory limit in bytes.
    pub const SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";
}

pub const KATA_PREFIX: &str = "io.katacontainers.";
pub const HYPERVISOR_PREFIX: &str = "io.katacontainers.config.hypervisor.";
/// Upstream's `MinHypervisorMemory`: the least `default_memory` (MiB) accepted.
pub const MIN_MEMORY_MIB: u32 = 256;

/// Hypervisor keys naming a file the VM boots or the host runs, for which
/// there is no `valid_*` list here: refused.
const UNLISTED_ASSETS: &[&str] = &[
    "kernel",
    "image",
    "initrd",
    "firmware",
    "firmware_volume",
    "jailer_path",
    "ctlpath",
    "file_mem_backend",
    "entropy_source",
    "vhost_user_store_path",
];

/// The configuration's say on annotations (`[hypervisor.qemu]` keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnnotationPolicy {
    pub enable_annotations: Vec<String>,
    pub valid_hypervisor_paths: Vec<String>,
    pub valid_virtio_fs_daemon_paths: Vec<String>,
}

/// What the annotations override; `None` = keep the configuration's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub path: Option<PathBuf>,
    /// To append to the configured kernel parameters (as upstream does).
    pub kernel_params: Option<String>,
    pub default_vcpus: Option<u32>,
    /// MiB, at least [`MIN_MEMORY_MIB`].
    pub default_memory: Option<u32>,
    pub virtio_fs_daemon: Option<PathBuf>,
    pub machine_type: Option<String>,
}

/// The policy's regexes and globs, compiled.
struct Compiled {
    enabled: Vec<Regex>,
    hypervisor_paths: Vec<Regex>,
    virtio_fs_daemon_paths: Vec<Regex>,
}

impl Compiled {
    fn new(p: &AnnotationPolicy) -> Result<Self> {
        let enabled = p
            .enable_annotations
            .iter()
            .map(|a| {
                Regex::new(&format!("^(?:{a})$")).map_err(|e| {
                    Error::Config(format!("hypervisor.qemu.enable_annotations {a:?}: {e}"))
                })
            })
            .collect::<Result<_>>()?;
        Ok(Compiled {
            enabled,
            hypervisor_paths: globs("valid_hypervisor_paths", &p.valid_hypervisor_paths)?,
            virtio_fs_daemon_paths: globs(
                "valid_virtio_fs_daemon_paths",
                &p.valid_virtio_fs_daemon_paths,
            )?,
        })
    }
}

/// Checks the policy's patterns; for configuration loading, so that a bad
/// pattern fails there rather than at the first annotated pod.
pub fn check_policy(policy: &AnnotationPolicy) -> Result<()> {
    Compiled::new(policy).map(|_| ())
}

fn globs(key: &str, list: &[String]) -> Result<Vec<Regex>> {
    list.iter()
        .map(|g| {
            glob_regex(g)
                .ok_or_else(|| Error::Config(format!("hypervisor.qemu.{key}: bad glob {g:?}")))
        })
        .collect()
}

/// A shell glob as an anchored regex: `*` and `?` never match `/`;
/// `[...]`/`[!...]` are character classes.
fn glob_regex(glob: &str) -> Option<Regex> {
    let mut re = String::from("^");
    let mut chars = glob.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("[^/]*"),
            '?' => re.push_str("[^/]"),
            '[' => {
                re.push('[');
                if matches!(chars.peek(), Some('!' | '^')) {
                    chars.next();
                    re.push('^');
                }
                let mut closed = false;
                let mut first = true;
                for c in chars.by_ref() {
                    if c == ']' && !first {
                        closed = true;
                        break;
                    }
                    first = false;
                    if matches!(c, '\\' | '[' | ']' | '&' | '~' | '^') {
                        re.push('\\');
                    }
                    re.push(c);
                }
                if !closed {
                    return None;
                }
                re.push(']');
            }
            c => re.push_str(&regex::escape(c.encode_utf8(&mut [0; 4]))),
        }
    }
    re.push('$');
    Regex::new(&re).ok()
}

fn bad(key: &str, value: &str, why: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("annotation {key}={value:?}: {why}"))
}

/// An absolute, normalised path matching one of `globs` (named `list`).
fn checked_path(key: &str, value: &str, globs: &[Regex], list: &str) -> Result<PathBuf> {
    let path = Path::new(value);
    let normal = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !normal {
        return Err(bad(key, value, "not an absolute normalised path"));
    }
    if !globs.iter().any(|g| g.is_match(value)) {
        return Err(bad(key, value, format!("not in hypervisor.qemu.{list}")));
    }
    Ok(path.to_path_buf())
}

fn number(key: &str, value: &str, min: u32) -> Result<u32> {
    let n: u32 = value
        .trim()
        .parse()
        .map_err(|e| bad(key, value, format!("not a whole number: {e}")))?;
    if n < min {
        return Err(bad(key, value, format!("must be ≥ {min}")));
    }
    Ok(n)
}

/// Applies the OCI spec's kata annotations to `target` under `policy`.
/// On error `target` is left unchanged. Keys are taken in sorted order, so the
/// error reported for a spec is always the same one.
pub fn apply(
    annotations: &HashMap<String, String>,
    policy: &AnnotationPolicy,
    target: &mut Overrides,
) -> Result<()> {
    let mut keys: Vec<&String> = annotations
        .keys()
        .filter(|k| k.starts_with(KATA_PREFIX))
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    keys.sort();
    let policy = Compiled::new(policy)?;
    let mut out = target.clone();
    for key in keys {
        let value = annotations[key].as_str();
        let Some(short) = key.strip_prefix(HYPERVISOR_PREFIX) else {
            tracing::warn!(annotation = %key, "kata annotation not implemented, ignored");
            continue;
        };
        if !policy.enabled.iter().any(|r| r.is_match(short)) {
            return Err(Error::InvalidArgument(format!(
                "annotation {key} is not enabled (hypervisor.qemu.enable_annotations)"
            )));
        }
        match short {
            "path" => {
                out.path = Some(checked_path(
                    key,
                    value,
                    &policy.hypervisor_paths,
                    "valid_hypervisor_paths",
                )?)
            }
            "virtio_fs_daemon" => {
                out.virtio_fs_daemon = Some(checked_path(
                    key,
                    value,
                    &policy.virtio_fs_daemon_paths,
                    "valid_virtio_fs_daemon_paths",
                )?)
            }
            "kernel_params" => {
                if value.chars().any(char::is_control) {
                    return Err(bad(key, value, "control characters in kernel parameters"));
                }
                let params = value.trim();
                if !params.is_empty() {
                    out.kernel_params = Some(params.to_string());
                }
            }
            "default_vcpus" => out.default_vcpus = Some(number(key, value, 1)?),
            "default_memory" => out.default_memory = Some(number(key, value, MIN_MEMORY_MIB)?),
            "machine_type" => {
                // A bare machine name: no ",option=…" smuggled into -machine.
                let ok = value.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
                if !ok {
                    return Err(bad(key, value, "not a QEMU machine type name"));
                }
                out.machine_type = Some(value.to_string());
            }
            s if UNLISTED_ASSETS.contains(&s) => {
                return Err(bad(key, value, "asset path with no valid_* list: refused"));
            }
            _ => {
                tracing::warn!(annotation = %key, "hypervisor annotation not implemented, ignored");
            }
        }
    }
    *target = out;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(enable: &[&str]) -> AnnotationPolicy {
        AnnotationPolicy {
            enable_annotations: enable.iter().map(|s| s.to_string()).collect(),
            valid_hypervisor_paths: vec![
                "/usr/bin/qemu-system-x86_64".into(),
                "/opt/kata/bin/qemu-*".into(),
            ],
            valid_virtio_fs_daemon_paths: vec!["/usr/libexec/virtiofsd".into()],
        }
    }

    fn hv(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (format!("{HYPERVISOR_PREFIX}{k}"), v.to_string()))
            .collect()
    }

    fn run(pairs: &[(&str, &str)], enable: &[&str]) -> Result<Overrides> {
        let mut o = Overrides::default();
        apply(&hv(pairs), &policy(enable), &mut o).map(|()| o)
    }

    fn invalid(pairs: &[(&str, &str)], enable: &[&str]) -> String {
        match run(pairs, enable) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{pairs:?}: want InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn enabled_annotations_override() {
        let o = run(
            &[
                ("path", "/opt/kata/bin/qemu-system-x86_64"),
                ("kernel_params", " quiet systemd.unit=x "),
                ("default_vcpus", "4"),
                ("default_memory", "2048"),
                ("virtio_fs_daemon", "/usr/libexec/virtiofsd"),
                ("machine_type", "pc-q35-7.2"),
            ],
            &[".*"],
        )
        .unwrap();
        assert_eq!(
            o,
            Overrides {
                path: Some("/opt/kata/bin/qemu-system-x86_64".into()),
                kernel_params: Some("quiet systemd.unit=x".into()),
                default_vcpus: Some(4),
                default_memory: Some(2048),
                virtio_fs_daemon: Some("/usr/libexec/virtiofsd".into()),
                machine_type: Some("pc-q35-7.2".into()),
            }
        );
    }

    #[test]
    fn not_enabled_is_refused_by_name() {
        let m = invalid(&[("default_vcpus", "2")], &[]);
        assert!(
            m.contains("io.katacontainers.config.hypervisor.default_vcpus"),
            "{m}"
        );
        assert!(m.contains("not enabled"), "{m}");
        // Whole-name match: "default_" or "kernel" enable nothing longer.
        invalid(&[("default_vcpus", "2")], &["default_"]);
        invalid(&[("kernel_params", "quiet")], &["kernel"]);
        // Plain names and regexes both work.
        assert!(run(&[("kernel_params", "quiet")], &["kernel_params"]).is_ok());
        assert!(run(&[("default_vcpus", "2")], &["default_(vcpus|memory)"]).is_ok());
    }

    #[test]
    fn paths_must_be_in_the_valid_lists() {
        let all = &[".*"];
        let m = invalid(&[("path", "/tmp/evil-qemu")], all);
        assert!(
            m.contains("/tmp/evil-qemu") && m.contains("valid_hypervisor_paths"),
            "{m}"
        );
        // `*` does not cross a '/', and `..` cannot climb out of a glob.
        invalid(
            &[("path", "/opt/kata/bin/qemu-x/../../../../tmp/evil")],
            all,
        );
        invalid(&[("path", "/opt/kata/bin/qemu-dir/evil")], all);
        invalid(&[("path", "qemu-system-x86_64")], all);
        let m = invalid(&[("virtio_fs_daemon", "/usr/bin/virtiofsd")], all);
        assert!(m.contains("valid_virtio_fs_daemon_paths"), "{m}");
        // The hypervisor list does not admit a virtiofsd, nor the reverse.
        invalid(&[("virtio_fs_daemon", "/usr/bin/qemu-system-x86_64")], all);
        // An empty list refuses everything.
        let mut p = policy(all);
        p.valid_hypervisor_paths.clear();
        let mut o = Overrides::default();
        let err = apply(&hv(&[("path", "/usr/bin/qemu-system-x86_64")]), &p, &mut o);
        assert!(matches!(err, Err(Error::InvalidArgument(_))), "{err:?}");
    }

    #[test]
    fn unlisted_asset_paths_are_refused_even_when_enabled() {
        for key in ["kernel", "initrd", "image", "jailer_path"] {
            let m = invalid(&[(key, "/usr/share/kata/vmlinux")], &[".*"]);
            assert!(m.contains(key) && m.contains("vmlinux"), "{m}");
        }
    }

    #[test]
    fn bad_values_name_annotation_and_value() {
        let all = &[".*"];
        for (key, value) in [
            ("default_vcpus", "two"),
            ("default_vcpus", "0"),
            ("default_vcpus", "1.5"),
            ("default_vcpus", "-1"),
            ("default_memory", "lots"),
            ("default_memory", "128"),
            ("machine_type", "q35,accel=kvm"),
            ("machine_type", ""),
            ("kernel_params", "quiet\ninit=/bin/sh"),
        ] {
            let m = invalid(&[(key, value)], all);
            assert!(m.contains(key), "{m}");
            assert!(m.contains(&format!("{value:?}")), "{m}");
        }
    }

    #[test]
    fn an_error_leaves_target_unchanged() {
        let mut o = Overrides {
            default_vcpus: Some(1),
            ..Default::default()
        };
        let before = o.clone();
        // default_memory sorts before path: it is applied, then path fails.
        let err = apply(
            &hv(&[("default_memory", "512"), ("path", "/tmp/x")]),
            &policy(&[".*"]),
            &mut o,
        );
        assert!(err.is_err());
        assert_eq!(o, before);
    }

    #[test]
    fn other_keys_are_ignored() {
        let mut a = hv(&[("enable_iommu", "true"), ("default_vcpus", "2")]);
        a.insert(
            "io.katacontainers.config.runtime.disable_guest_seccomp".into(),
            "x".into(),
        );
        a.insert("io.katacontainers.pkg.oci.bundle_path".into(), "/x".into());
        a.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
        let mut o = Overrides::default();
        apply(&a, &policy(&["enable_iommu", "default_vcpus"]), &mut o).unwrap();
        assert_eq!(o.default_vcpus, Some(2));
        // Non-kata annotations need no policy at all.
        let mut o = Overrides::default();
        let only_cri = HashMap::from([("io.kubernetes.cri.sandbox-id".into(), "x".into())]);
        apply(&only_cri, &AnnotationPolicy::default(), &mut o).unwrap();
        assert_eq!(o, Overrides::default());
        // Blank kernel parameters change nothing.
        assert_eq!(
            run(&[("kernel_params", "  ")], &[".*"]).unwrap(),
            Overrides::default()
        );
    }

    #[test]
    fn bad_policy_patterns_are_config_errors() {
        let bad_regex = AnnotationPolicy {
            enable_annotations: vec!["(".into()],
            ..Default::default()
        };
        assert!(matches!(check_policy(&bad_regex), Err(Error::Config(_))));
        let bad_glob = AnnotationPolicy {
            valid_hypervisor_paths: vec!["/usr/bin/[qemu".into()],
            ..Default::default()
        };
        assert!(matches!(check_policy(&bad_glob), Err(Error::Config(_))));
        assert!(check_policy(&policy(&["kernel_params"])).is_ok());
    }

    #[test]
    fn globs_match_like_the_shell() {
        let g = |p: &str| glob_regex(p).unwrap();
        assert!(g("/usr/bin/qemu-*").is_match("/usr/bin/qemu-system-x86_64"));
        assert!(!g("/usr/bin/qemu-*").is_match("/usr/bin/qemu-x/y"));
        assert!(g("/usr/bin/qemu?kvm").is_match("/usr/bin/qemu-kvm"));
        assert!(g("/usr/[lb]in/q").is_match("/usr/bin/q"));
        assert!(!g("/usr/[!lb]in/q").is_match("/usr/bin/q"));
        assert!(!g("/usr/bin/qemu.kvm").is_match("/usr/bin/qemuxkvm"));
        assert!(g("/a/[]]").is_match("/a/]"));
    }
}
