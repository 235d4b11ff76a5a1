//! The VM sized for the pod before its first container runs.
//!
//! containerd 1.7+ puts the pod's summed limits on the sandbox container as
//! annotations; like Kata's runtime, the VM boots with the configured
//! default size *plus* those (the defaults are the guest's own overhead:
//! kernel, agent, page cache), so a container whose limit is larger than
//! the default VM still has room for it. Without the annotations (containerd
//! 1.6) the boot size stays the configured one. The hotplug maxima bound
//! the vCPUs; memory above the hotplug room drops that room, as a boot size
//! raised by annotations does.

use std::collections::HashMap;

use crate::config::Config;
use crate::error::{Error, Result};

use crate::annotations::cri::{SANDBOX_CPU_PERIOD, SANDBOX_CPU_QUOTA, SANDBOX_MEMORY};

const MIB: u64 = 1 << 20;

/// What the pod's containers are limited to, summed (0 = no limit).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PodSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

fn number(a: &HashMap<String, String>, key: &str) -> Result<i64> {
    match a.get(key).map(|v| v.trim()) {
        None | Some("") => Ok(0),
        Some(v) => v
            .parse::<i64>()
            .map_err(|_| Error::InvalidArgument(format!("annotation {key}={v:?} is not a number"))),
    }
}

impl PodSize {
    /// The size one container's limits ask for.
    pub fn of(needs: crate::vmsize::Needs) -> PodSize {
        PodSize {
            vcpus: needs.cpus.unwrap_or(0),
            memory_mib: needs.memory_mib.unwrap_or(0),
        }
    }
}

/// The pod's size from CRI's sandbox annotations.
pub fn from_annotations(a: &HashMap<String, String>) -> Result<PodSize> {
    let (period, quota) = (
        number(a, SANDBOX_CPU_PERIOD)?,
        number(a, SANDBOX_CPU_QUOTA)?,
    );
    let vcpus = if period > 0 && quota > 0 {
        // A quota of 1.5 CPUs needs 2 vCPUs to be usable.
        u32::try_from((quota + period - 1) / period).unwrap_or(u32::MAX)
    } else {
        0
    };
    let bytes = u64::try_from(number(a, SANDBOX_MEMORY)?).unwrap_or(0);
    let memory_mib = u32::try_from(bytes.div_ceil(MIB)).unwrap_or(u32::MAX);
    Ok(PodSize { vcpus, memory_mib })
}

/// `cfg` with the VM grown by the pod's size, within `host_cpus`.
pub fn apply(cfg: &Config, size: PodSize, host_cpus: u32) -> Config {
    let mut c = cfg.clone();
    if size == PodSize::default() {
        return c;
    }
    let q = &mut c.qemu;
    let cap = q.options.max_vcpus.unwrap_or(host_cpus).max(q.vcpus);
    let vcpus = q.vcpus.saturating_add(size.vcpus).min(cap);
    q.pod_vcpus = vcpus - q.vcpus;
    q.vcpus = vcpus;
    q.pod_memory_mib = size.memory_mib;
    q.memory_mib = q.memory_mib.saturating_add(size.memory_mib);
    if let Some(h) = q.options.memory_hotplug.as_ref() {
        if h.max_mib <= q.memory_mib {
            q.options.memory_hotplug = None;
        }
    }
    tracing::info!(
        vcpus = q.vcpus,
        memory_mib = q.memory_mib,
        pod_vcpus = size.vcpus,
        pod_memory_mib = size.memory_mib,
        "VM sized for the pod"
    );
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("k.toml");
        std::fs::write(
            &p,
            format!("[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n{extra}"),
        )
        .expect("config");
        crate::config::load(&p).expect("valid config")
    }

    #[test]
    fn limits_become_vcpus_and_memory() {
        let a = ann(&[
            (SANDBOX_CPU_PERIOD, "100000"),
            (SANDBOX_CPU_QUOTA, "150000"),
            (SANDBOX_MEMORY, "2147483648"),
        ]);
        assert_eq!(
            from_annotations(&a).expect("parsed"),
            PodSize {
                vcpus: 2,
                memory_mib: 2048
            }
        );
        // No quota (-1 or absent), no memory limit: nothing to add.
        let a = ann(&[
            (SANDBOX_CPU_PERIOD, "100000"),
            (SANDBOX_CPU_QUOTA, "-1"),
            (SANDBOX_MEMORY, "0"),
        ]);
        assert_eq!(from_annotations(&a).expect("parsed"), PodSize::default());
        assert_eq!(
            from_annotations(&ann(&[])).expect("none"),
            PodSize::default()
        );
        let e = from_annotations(&ann(&[(SANDBOX_MEMORY, "2Gi")])).expect_err("not bytes");
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }

    #[test]
    fn the_vm_boots_with_the_defaults_plus_the_pod() {
        let c = config("default_vcpus = 1\ndefault_memory = 256\ndefault_maxvcpus = 2\n");
        let size = PodSize {
            vcpus: 4,
            memory_mib: 2048,
        };
        let sized = apply(&c, size, 8);
        assert_eq!(sized.qemu.memory_mib, 256 + 2048);
        assert_eq!(sized.qemu.vcpus, 2, "bounded by default_maxvcpus");
        let c = config("default_vcpus = 1\n");
        assert_eq!(apply(&c, size, 2).qemu.vcpus, 2, "bounded by the host");
        assert_eq!(
            apply(&c, PodSize::default(), 2),
            c,
            "no annotations: as configured"
        );
    }
}
