//! Mount option parsing and the sandbox storages (`Storage` in the kata API).
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};
use protocols::agent::Storage;
use protocols::share::driver;

/// Longest a storage mount waits for the background module loading.
const MODULES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Splits mount(8)-style options into flags and the filesystem data string.
pub fn parse_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for opt in options.iter().flat_map(|o| o.split(',')) {
        let (set, clear) = match opt {
            "" | "defaults" | "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            // Propagation is handled by the caller's namespace setup.
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => (MsFlags::empty(), MsFlags::empty()),
            other => {
                data.push(other.to_string());
                (MsFlags::empty(), MsFlags::empty())
            }
        };
        flags.remove(clear);
        flags.insert(set);
    }
    (flags, data.join(","))
}

/// A filesystem the agent mounted for the sandbox or a container.
#[derive(Debug, Clone)]
pub struct Mounted {
    pub mount_point: String,
}

impl Mounted {
    pub fn unmount(&self) {
        match umount2(self.mount_point.as_str(), MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
            Err(e) => tracing::warn!(mount_point = %self.mount_point, error = %e, "unmount"),
        }
    }
}

fn is_mount_point(path: &str) -> bool {
    // A mount point is listed in /proc/self/mountinfo's fifth field.
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(path.trim_end_matches('/')))
        })
        .unwrap_or(false)
}

/// Storage drivers [`mount_storage`] handles (upstream kata's names).
pub const STORAGE_DRIVERS: [&str; 5] = driver::ALL;
/// 9p mount options when the storage brings none (virtio transport, Linux dialect).
const DEFAULT_9P_OPTIONS: &str = "trans=virtio,version=9p2000.L,msize=512000";

/// Mounts one storage the shim sent; returns what to unmount later, or None
/// when nothing was mounted (a "local" directory or an already present mount).
pub fn mount_storage(s: &Storage) -> Result<Option<Mounted>> {
    if !s.mount_point.starts_with('/') {
        return Err(Error::InvalidArgument(format!(
            "storage mount point {:?} is not absolute",
            s.mount_point
        )));
    }
    std::fs::create_dir_all(&s.mount_point)
        .map_err(|e| Error::io(format!("mkdir {}", s.mount_point), e))?;
    let (fstype, source) = match s.driver.as_str() {
        driver::VIRTIO_FS | "virtiofs" => ("virtiofs", s.source.as_str()),
        driver::EPHEMERAL | "tmpfs" => ("tmpfs", "tmpfs"),
        driver::NINE_P => ("9p", s.source.as_str()),
        driver::LOCAL => return Ok(None),
        driver::OVERLAYFS | "overlay" => ("overlay", "overlay"),
        other => {
            return Err(Error::InvalidArgument(format!(
                "unsupported storage driver {other:?}"
            )))
        }
    };
    // virtiofs and overlay may still be loading (see init::load_modules).
    crate::init::wait_for_modules(MODULES_TIMEOUT);
    if is_mount_point(&s.mount_point) {
        tracing::info!(mount_point = %s.mount_point, "storage already mounted");
        return Ok(None);
    }
    let (flags, mut data) = parse_options(&s.options);
    if fstype == "9p" && !data.contains("trans=") {
        data = if data.is_empty() {
            DEFAULT_9P_OPTIONS.to_string()
        } else {
            format!("{DEFAULT_9P_OPTIONS},{data}")
        };
    }
    let data = (!data.is_empty()).then_some(data.as_str());
    mount(
        Some(source),
        Path::new(&s.mount_point),
        Some(fstype),
        flags,
        data,
    )
    .map_err(|e| Error::sys(format!("mount {fstype} {source} on {}", s.mount_point), e))?;
    tracing::info!(driver = %s.driver, source, mount_point = %s.mount_point, "storage mounted");
    Ok(Some(Mounted {
        mount_point: s.mount_point.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let opts = vec![
            "nosuid,strictatime".to_string(),
            "mode=755".into(),
            "size=65536k".into(),
            "ro".into(),
        ];
        let (flags, data) = parse_options(&opts);
        assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME | MsFlags::MS_RDONLY));
        assert_eq!(data, "mode=755,size=65536k");
        let (flags, _) = parse_options(&["ro".to_string(), "rw".to_string(), "rbind".to_string()]);
        assert!(!flags.contains(MsFlags::MS_RDONLY));
        assert!(flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
    }
}
