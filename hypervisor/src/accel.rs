//! Host probing: which accelerator and which vsock transport this host can use.
//! Pure functions over injectable paths, so the decisions are unit-testable.

use std::path::PathBuf;

use crate::{Accel, Error, Result, VsockKind};

/// The host files the decisions look at. `Default` is the real host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// KVM device; usable only if it opens read-write.
    pub kvm_device: PathBuf,
    /// Present on a nested PVM host, where a standard guest hangs at boot under KVM.
    pub pvm_module: PathBuf,
    /// Kernel vhost-vsock device.
    pub vhost_vsock_device: PathBuf,
}

impl Default for HostProbe {
    fn default() -> Self {
        Self {
            kvm_device: PathBuf::from("/dev/kvm"),
            pvm_module: PathBuf::from("/sys/module/kvm_pvm"),
            vhost_vsock_device: PathBuf::from("/dev/vhost-vsock"),
        }
    }
}

/// The accelerator QEMU is actually started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedAccel {
    Kvm,
    Tcg,
}

/// The vsock transport actually used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolvedVsock {
    Vhost,
    VhostUser,
}

fn kvm_usable(probe: &HostProbe) -> std::result::Result<(), String> {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&probe.kvm_device)
    {
        return Err(format!(
            "{} cannot be opened read-write: {e}",
            probe.kvm_device.display()
        ));
    }
    if probe.pvm_module.exists() {
        return Err(format!(
            "{} exists: nested PVM host, a standard guest hangs at boot under KVM",
            probe.pvm_module.display()
        ));
    }
    Ok(())
}

/// Resolves the requested accelerator; returns the choice and the reason for it.
/// An explicit `Kvm` on a host where KVM is unusable is a configuration error.
pub fn resolve_accel(requested: Accel, probe: &HostProbe) -> Result<(ResolvedAccel, String)> {
    match requested {
        Accel::Tcg => Ok((ResolvedAccel::Tcg, "TCG requested".into())),
        Accel::Kvm => match kvm_usable(probe) {
            Ok(()) => Ok((ResolvedAccel::Kvm, "KVM requested".into())),
            Err(why) => Err(Error::InvalidConfig(format!(
                "accel: KVM requested but {why}"
            ))),
        },
        Accel::Auto => match kvm_usable(probe) {
            Ok(()) => Ok((
                ResolvedAccel::Kvm,
                format!("{} is usable", probe.kvm_device.display()),
            )),
            Err(why) => Ok((ResolvedAccel::Tcg, why)),
        },
    }
}

/// Resolves the requested vsock transport.
pub fn resolve_vsock(requested: VsockKind, probe: &HostProbe) -> Result<ResolvedVsock> {
    let have_vhost = probe.vhost_vsock_device.exists();
    match requested {
        VsockKind::Vhost if !have_vhost => Err(Error::InvalidConfig(format!(
            "vsock: kernel vhost-vsock requested but {} does not exist",
            probe.vhost_vsock_device.display()
        ))),
        VsockKind::Vhost => Ok(ResolvedVsock::Vhost),
        VsockKind::VhostUser => Ok(ResolvedVsock::VhostUser),
        VsockKind::Auto if have_vhost => Ok(ResolvedVsock::Vhost),
        VsockKind::Auto => Ok(ResolvedVsock::VhostUser),
    }
}

/// Number of CPUs this process may run on.
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn probe(dir: &Path, kvm: bool, pvm: bool, vhost: bool) -> HostProbe {
        let p = HostProbe {
            kvm_device: dir.join("kvm"),
            pvm_module: dir.join("kvm_pvm"),
            vhost_vsock_device: dir.join("vhost-vsock"),
        };
        if kvm {
            std::fs::write(&p.kvm_device, b"").expect("fake kvm");
        }
        if pvm {
            std::fs::create_dir(&p.pvm_module).expect("fake pvm");
        }
        if vhost {
            std::fs::write(&p.vhost_vsock_device, b"").expect("fake vhost");
        }
        p
    }

    #[test]
    fn auto_picks_kvm_only_without_pvm() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = probe(d.path(), true, false, false);
        assert_eq!(
            resolve_accel(Accel::Auto, &p).expect("auto").0,
            ResolvedAccel::Kvm
        );

        let d = tempfile::tempdir().expect("tempdir");
        let p = probe(d.path(), true, true, false);
        let (a, why) = resolve_accel(Accel::Auto, &p).expect("auto");
        assert_eq!(a, ResolvedAccel::Tcg);
        assert!(why.contains("PVM"), "{why}");

        let d = tempfile::tempdir().expect("tempdir");
        let p = probe(d.path(), false, false, false);
        let (a, why) = resolve_accel(Accel::Auto, &p).expect("auto");
        assert_eq!(a, ResolvedAccel::Tcg);
        assert!(why.contains("cannot be opened"), "{why}");
    }

    #[test]
    fn explicit_kvm_on_unusable_host_is_invalid() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = probe(d.path(), true, true, false);
        assert!(matches!(
            resolve_accel(Accel::Kvm, &p),
            Err(Error::InvalidConfig(_))
        ));
        assert_eq!(
            resolve_accel(Accel::Tcg, &p).expect("tcg").0,
            ResolvedAccel::Tcg
        );
    }

    #[test]
    fn vsock_auto_follows_device() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = probe(d.path(), false, false, true);
        assert_eq!(
            resolve_vsock(VsockKind::Auto, &p).expect("auto"),
            ResolvedVsock::Vhost
        );
        let d = tempfile::tempdir().expect("tempdir");
        let p = probe(d.path(), false, false, false);
        assert_eq!(
            resolve_vsock(VsockKind::Auto, &p).expect("auto"),
            ResolvedVsock::VhostUser
        );
        assert!(matches!(
            resolve_vsock(VsockKind::Vhost, &p),
            Err(Error::InvalidConfig(_))
        ));
    }
}
