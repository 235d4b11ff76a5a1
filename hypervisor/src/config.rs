//! Validation of a [`VmConfig`] before anything is spawned.

use std::path::Path;

use crate::accel::ResolvedVsock;
use crate::{Error, Result, VmConfig};

/// Smallest memory a guest gets.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Longest unix socket path (sun_path is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// The longest socket name placed in the run directory.
const LONGEST_SOCKET_NAME: &str = "vhost-vsock.sock";

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

fn require_file(field: &str, path: &Path) -> Result<()> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(invalid(format!(
            "{field}: {} is not a regular file",
            path.display()
        ))),
        Err(e) => Err(invalid(format!("{field}: {}: {e}", path.display()))),
    }
}

/// Checks every field of `config`; `host_cpus` bounds `vcpus`, `vsock` says
/// whether the vhost-device-vsock helper is needed.
pub fn validate(config: &VmConfig, host_cpus: u32, vsock: ResolvedVsock) -> Result<()> {
    if config.id.is_empty()
        || !config
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(invalid(format!(
            "id: {:?} must be non-empty and contain only [A-Za-z0-9._-]",
            config.id
        )));
    }
    if !config.run_dir.is_absolute() {
        return Err(invalid(format!(
            "run_dir: {} is not absolute",
            config.run_dir.display()
        )));
    }
    let longest = config.run_dir.join(LONGEST_SOCKET_NAME);
    if longest.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(invalid(format!(
            "run_dir: {} is too long for unix socket paths inside it (max {MAX_SOCKET_PATH} bytes)",
            config.run_dir.display()
        )));
    }
    require_file("qemu_path", &config.qemu_path)?;
    require_file("kernel", &config.kernel)?;
    require_file("initrd", &config.initrd)?;
    require_file("virtiofsd_path", &config.virtiofsd_path)?;
    if vsock == ResolvedVsock::VhostUser {
        require_file("vhost_device_vsock_path", &config.vhost_device_vsock_path)?;
    }
    match std::fs::metadata(&config.shared_dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(invalid(format!(
                "shared_dir: {} is not a directory",
                config.shared_dir.display()
            )))
        }
        Err(e) => {
            return Err(invalid(format!(
                "shared_dir: {}: {e}",
                config.shared_dir.display()
            )))
        }
    }
    if config.memory_mib < MIN_MEMORY_MIB {
        return Err(invalid(format!(
            "memory_mib: {} MiB is below the minimum of {MIN_MEMORY_MIB} MiB",
            config.memory_mib
        )));
    }
    if config.vcpus == 0 || config.vcpus > host_cpus {
        return Err(invalid(format!(
            "vcpus: {} is not between 1 and the host's {host_cpus} CPUs",
            config.vcpus
        )));
    }
    if config.start_timeout.is_zero() {
        return Err(invalid("start_timeout: must be greater than zero".into()));
    }
    if config.kernel_params.contains('"') {
        return Err(invalid("kernel_params: must not contain '\"'".into()));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::{Accel, MachineType, VsockKind};

    /// A config whose every path exists (all pointing at files in `dir`).
    pub(crate) fn valid_config(dir: &Path) -> VmConfig {
        let file = |name: &str| {
            let p = dir.join(name);
            std::fs::write(&p, b"x").expect("write fixture");
            p
        };
        let shared = dir.join("shared");
        std::fs::create_dir_all(&shared).expect("shared dir");
        VmConfig {
            id: "sb1".into(),
            run_dir: dir.join("run"),
            qemu_path: file("qemu"),
            kernel: file("vmlinux"),
            initrd: file("initrd.img"),
            kernel_params: "quiet".into(),
            machine: MachineType::Q35,
            accel: Accel::Tcg,
            vcpus: 1,
            memory_mib: 256,
            vsock: VsockKind::VhostUser,
            vhost_device_vsock_path: file("vhost-device-vsock"),
            shared_dir: shared,
            virtiofsd_path: file("virtiofsd"),
            start_timeout: Duration::from_secs(5),
        }
    }

    fn err_of(c: &VmConfig) -> String {
        match validate(c, 2, ResolvedVsock::VhostUser) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn valid_config_passes() {
        let d = tempfile::tempdir().expect("tempdir");
        validate(&valid_config(d.path()), 2, ResolvedVsock::VhostUser).expect("valid");
    }

    #[test]
    fn bad_fields_are_named() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = valid_config(d.path());

        let mut c = base.clone();
        c.kernel = PathBuf::from("/nonexistent/vmlinux");
        let m = err_of(&c);
        assert!(
            m.contains("kernel") && m.contains("/nonexistent/vmlinux"),
            "{m}"
        );

        let mut c = base.clone();
        c.memory_mib = 64;
        assert!(err_of(&c).contains("memory_mib"));

        let mut c = base.clone();
        c.vcpus = 1000;
        assert!(err_of(&c).contains("vcpus"));

        let mut c = base.clone();
        c.vcpus = 0;
        assert!(err_of(&c).contains("vcpus"));

        let mut c = base.clone();
        c.id = "a,b".into();
        assert!(err_of(&c).contains("id"));

        let mut c = base.clone();
        c.run_dir = PathBuf::from(format!("/{}", "x".repeat(100)));
        assert!(err_of(&c).contains("run_dir"));

        let mut c = base.clone();
        c.shared_dir = d.path().join("qemu");
        assert!(err_of(&c).contains("shared_dir"));

        let mut c = base.clone();
        c.vhost_device_vsock_path = PathBuf::from("/nonexistent/vdv");
        assert!(err_of(&c).contains("vhost_device_vsock_path"));
        // Not needed with kernel vhost-vsock.
        validate(&c, 2, ResolvedVsock::Vhost).expect("vhost needs no helper");
    }
}
