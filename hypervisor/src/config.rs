//! Validation of a [`VmConfig`] before anything is spawned.

use std::path::Path;

use crate::accel::ResolvedVsock;
use crate::options::{SharedFsKind, VmOptions};
use crate::{Error, MachineType, Result, VmConfig};

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

/// Checks every field of `config` and `options`; `host_cpus` bounds `vcpus`,
/// `vsock` says whether the vhost-device-vsock helper is needed.
pub fn validate(
    config: &VmConfig,
    options: &VmOptions,
    host_cpus: u32,
    vsock: ResolvedVsock,
) -> Result<()> {
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
    if options.shared_fs == SharedFsKind::VirtioFs {
        require_file("virtiofsd_path", &config.virtiofsd_path)?;
    }
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
    if let Some(net) = &config.network {
        validate_network(net)?;
    }
    validate_options(config, options, host_cpus)
}

fn validate_network(net: &crate::NetworkConfig) -> Result<()> {
    if let Err(e) = std::fs::metadata(&net.netns) {
        return Err(invalid(format!(
            "network.netns: {}: {e}",
            net.netns.display()
        )));
    }
    for nic in &net.nics {
        validate_nic(nic)?;
    }
    let mut taps: Vec<&str> = net.nics.iter().map(|n| n.tap.as_str()).collect();
    taps.sort_unstable();
    taps.dedup();
    if taps.len() != net.nics.len() {
        return Err(invalid("network.nics: a tap is used twice".into()));
    }
    Ok(())
}

/// A NIC's tap name and MAC, checked before they reach QEMU (at boot and
/// at hotplug).
pub fn validate_nic(nic: &crate::NicConfig) -> Result<()> {
    // IFNAMSIZ is 16 with the NUL.
    if nic.tap.is_empty()
        || nic.tap.len() > 15
        || !nic
            .tap
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(invalid(format!(
            "network.tap: {:?} is not an interface name",
            nic.tap
        )));
    }
    let octets: Vec<&str> = nic.mac.split(':').collect();
    if octets.len() != 6
        || !octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(invalid(format!(
            "network.mac: {:?} is not a MAC address",
            nic.mac
        )));
    }
    Ok(())
}

fn validate_options(config: &VmConfig, options: &VmOptions, host_cpus: u32) -> Result<()> {
    if let Some(source) = &options.entropy_source {
        if !source.exists() {
            return Err(invalid(format!(
                "entropy_source: {} does not exist",
                source.display()
            )));
        }
    }
    if options
        .cpu_features
        .chars()
        .any(|c| c.is_whitespace() || c == '"')
    {
        return Err(invalid(format!(
            "cpu_features: {:?} must be a comma-separated list without spaces",
            options.cpu_features
        )));
    }
    let hotplug = options.max_vcpus.is_some() || options.memory_hotplug.is_some();
    if hotplug && config.machine == MachineType::Microvm {
        return Err(invalid(
            "max_vcpus / memory_hotplug: microvm has no hotplug; use q35".into(),
        ));
    }
    if let Some(max) = options.max_vcpus {
        if max < config.vcpus || max > host_cpus {
            return Err(invalid(format!(
                "max_vcpus: {max} is not between vcpus ({}) and the host's {host_cpus} CPUs",
                config.vcpus
            )));
        }
    }
    if let Some(h) = options.memory_hotplug {
        if h.slots == 0 || h.slots > 256 {
            return Err(invalid(format!(
                "memory_hotplug.slots: {} is not between 1 and 256",
                h.slots
            )));
        }
        if h.max_mib <= config.memory_mib {
            return Err(invalid(format!(
                "memory_hotplug.max_mib: {} MiB is not above memory_mib ({} MiB)",
                h.max_mib, config.memory_mib
            )));
        }
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
            console_ready: None,
            network: None,
        }
    }

    fn err_of(c: &VmConfig) -> String {
        match validate(c, &VmOptions::default(), 2, ResolvedVsock::VhostUser) {
            Err(Error::InvalidConfig(m)) => m,
            other => panic!("expected InvalidConfig, got {other:?}"),
        }
    }

    #[test]
    fn valid_config_passes() {
        let d = tempfile::tempdir().expect("tempdir");
        validate(
            &valid_config(d.path()),
            &VmOptions::default(),
            2,
            ResolvedVsock::VhostUser,
        )
        .expect("valid");
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
        validate(&c, &VmOptions::default(), 2, ResolvedVsock::Vhost)
            .expect("vhost needs no helper");
    }

    #[test]
    fn bad_options_are_named() {
        use crate::options::MemoryHotplug;
        let d = tempfile::tempdir().expect("tempdir");
        let c = valid_config(d.path());
        let check = |c: &VmConfig, o: VmOptions, field: &str| match validate(
            c,
            &o,
            2,
            ResolvedVsock::VhostUser,
        ) {
            Err(Error::InvalidConfig(m)) => assert!(m.contains(field), "{field}: {m}"),
            other => panic!("{field}: expected InvalidConfig, got {other:?}"),
        };
        let o = |f: fn(&mut VmOptions)| {
            let mut o = VmOptions::default();
            f(&mut o);
            o
        };
        check(&c, o(|o| o.max_vcpus = Some(3)), "max_vcpus");
        check(&c, o(|o| o.cpu_features = "a, b".into()), "cpu_features");
        check(
            &c,
            o(|o| o.entropy_source = Some("/nonexistent/rng".into())),
            "entropy_source",
        );
        check(
            &c,
            o(|o| {
                o.memory_hotplug = Some(MemoryHotplug {
                    slots: 2,
                    max_mib: 128,
                })
            }),
            "max_mib",
        );
        check(
            &c,
            o(|o| {
                o.memory_hotplug = Some(MemoryHotplug {
                    slots: 0,
                    max_mib: 1024,
                })
            }),
            "slots",
        );
        let mut micro = c.clone();
        micro.machine = MachineType::Microvm;
        check(&micro, o(|o| o.max_vcpus = Some(2)), "microvm");
        // 9p needs no virtiofsd.
        let mut no_fsd = c.clone();
        no_fsd.virtiofsd_path = "/nonexistent/virtiofsd".into();
        check(&no_fsd, VmOptions::default(), "virtiofsd_path");
        let nine_p = o(|o| o.shared_fs = SharedFsKind::Virtio9p);
        validate(&no_fsd, &nine_p, 2, ResolvedVsock::VhostUser).expect("9p needs no daemon");
    }
}
