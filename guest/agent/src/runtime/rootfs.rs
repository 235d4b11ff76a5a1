//! The container's filesystem view, built inside its new mount namespace:
//! the spec's mounts under the rootfs, a /dev with the usual nodes, then the
//! rootfs becomes `/`.
//!
//! Root switch: MS_MOVE of the rootfs onto `/` + chroot, not pivot_root(2):
//! the guest's own root is the initramfs (rootfs), which pivot_root refuses.
//! The container process cannot reach the old root: nothing of it is mounted
//! inside the new view and it runs without a handle on it.
use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, chroot, Gid, Uid};
use protocols::oci::{Mount, Spec};

use super::error::{err, Res, StepError};
use crate::mounts::parse_options;

const DEFAULT_DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];
const DEV_LINKS: [(&str, &str); 6] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
];

/// Resolves a container path under the rootfs the way the container will see
/// it (like filepath-securejoin): symlinks in existing components are followed
/// as if the rootfs were `/`, and `..` never leaves it. So an image's
/// `/var/run -> /run` sends a mount on `/var/run/x` to `<rootfs>/run/x`, not to
/// the guest's own `/run`.
pub(crate) fn under(root: &Path, path: &str) -> Option<PathBuf> {
    if !path.starts_with('/') {
        return None;
    }
    let parts = |p: &Path| -> Vec<OsString> {
        p.components()
            .filter_map(|c| match c {
                Component::Normal(s) => Some(s.to_owned()),
                Component::ParentDir => Some("..".into()),
                _ => None,
            })
            .collect()
    };
    let mut pending: VecDeque<OsString> = parts(Path::new(path)).into();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&c);
        let full = root.join(&candidate);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = fs::read_link(&full).ok()?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for part in parts(&target).into_iter().rev() {
                    pending.push_front(part);
                }
            }
            _ => resolved = candidate,
        }
    }
    Some(root.join(resolved))
}

pub fn setup(spec: &Spec, warn: &mut dyn FnMut(String)) -> Res<()> {
    let root_spec = spec
        .Root
        .as_ref()
        .ok_or_else(|| StepError::Spec("spec has no root".into()))?;
    let root = Path::new(&root_spec.Path);
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err(format!("bind {}", root.display())))?;
    let mut dev_is_tmpfs = false;
    for m in &spec.Mounts {
        let Some(dest) = under(root, &m.destination) else {
            warn(format!(
                "skipping mount on {:?}: not an absolute clean path",
                m.destination
            ));
            continue;
        };
        mount_one(m, &dest, warn)?;
        dev_is_tmpfs |= m.destination.trim_end_matches('/') == "/dev" && m.type_ == "tmpfs";
    }
    if dev_is_tmpfs {
        create_devices(root, spec, warn);
    }
    chdir(root).map_err(err("chdir rootfs"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(err("moving rootfs to /"))?;
    chroot(".").map_err(err("chroot"))?;
    chdir("/").map_err(err("chdir /"))?;
    if let Some(linux) = spec.Linux.as_ref() {
        for (key, value) in &linux.Sysctl {
            let path = format!("/proc/sys/{}", key.replace('.', "/"));
            if let Err(e) = fs::write(&path, value) {
                warn(format!("sysctl {key}={value}: {e}"));
            }
        }
        for p in &linux.MaskedPaths {
            mask(p, warn);
        }
        for p in &linux.ReadonlyPaths {
            if Path::new(p).exists() {
                let r = mount(
                    Some(p.as_str()),
                    p.as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .and_then(|_| remount_ro(p));
                if let Err(e) = r {
                    warn(format!("readonly path {p}: {e}"));
                }
            }
        }
    }
    if root_spec.Readonly {
        remount_ro("/").map_err(err("remounting / read-only"))?;
    }
    Ok(())
}

fn remount_ro(path: &str) -> nix::Result<()> {
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
    mount(None::<&str>, path, None::<&str>, flags, None::<&str>)
}

fn mask(path: &str, warn: &mut dyn FnMut(String)) {
    let r = match fs::metadata(path) {
        Err(_) => return,
        Ok(m) if m.is_dir() => mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        ),
        Ok(_) => mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        ),
    };
    if let Err(e) = r {
        warn(format!("masking {path}: {e}"));
    }
}

fn mount_one(m: &Mount, dest: &Path, warn: &mut dyn FnMut(String)) -> Res<()> {
    let (flags, data) = parse_options(&m.options);
    if m.type_ == "bind" || flags.contains(MsFlags::MS_BIND) {
        let meta = match fs::metadata(&m.source) {
            Ok(meta) => meta,
            Err(e) => {
                // Typically a host path the shim did not share: skip, loudly.
                warn(format!(
                    "skipping bind mount on {}: source {}: {e}",
                    m.destination, m.source
                ));
                return Ok(());
            }
        };
        if meta.is_dir() {
            fs::create_dir_all(dest).map_err(err(format!("mkdir {}", dest.display())))?;
        } else if !dest.exists() {
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent).map_err(err(format!("mkdir {}", parent.display())))?;
            }
            fs::File::create(dest).map_err(err(format!("create {}", dest.display())))?;
        }
        let bind = MsFlags::MS_BIND | (flags & MsFlags::MS_REC);
        mount(
            Some(m.source.as_str()),
            dest,
            None::<&str>,
            bind,
            None::<&str>,
        )
        .map_err(err(format!("bind {} on {}", m.source, dest.display())))?;
        let rest = flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            mount(
                None::<&str>,
                dest,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | rest,
                None::<&str>,
            )
            .map_err(err(format!("remount {}", dest.display())))?;
        }
        return Ok(());
    }
    let fstype = match m.type_.as_str() {
        t @ ("proc" | "sysfs" | "tmpfs" | "devpts" | "mqueue" | "cgroup2") => t,
        "cgroup" => "cgroup2", // the guest runs cgroup v2 only
        other => {
            warn(format!(
                "skipping mount on {}: unsupported type {other:?}",
                m.destination
            ));
            return Ok(());
        }
    };
    if let Err(e) = fs::create_dir_all(dest) {
        warn(format!("skipping mount on {}: mkdir: {e}", m.destination));
        return Ok(());
    }
    let source = if m.source.is_empty() {
        fstype
    } else {
        m.source.as_str()
    };
    let data = (!data.is_empty() && fstype != "cgroup2").then_some(data.as_str());
    if let Err(e) = mount(Some(source), dest, Some(fstype), flags, data) {
        warn(format!("skipping {fstype} mount on {}: {e}", m.destination));
    }
    Ok(())
}

fn create_devices(root: &Path, spec: &Spec, warn: &mut dyn FnMut(String)) {
    let dev = root.join("dev");
    for (name, major, minor) in DEFAULT_DEVICES {
        let path = dev.join(name);
        if path.exists() {
            continue;
        }
        let r = mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(std::io::Error::from)
        .and_then(|_| fs::set_permissions(&path, fs::Permissions::from_mode(0o666)));
        if let Err(e) = r {
            warn(format!("/dev/{name}: {e}"));
        }
    }
    for (name, target) in DEV_LINKS {
        let path = dev.join(name);
        if path.symlink_metadata().is_err() {
            if let Err(e) = symlink(target, &path) {
                warn(format!("/dev/{name}: {e}"));
            }
        }
    }
    for d in ["pts", "shm"] {
        let _ = fs::create_dir_all(dev.join(d));
    }
    let devices = spec
        .Linux
        .as_ref()
        .map(|l| l.Devices.as_slice())
        .unwrap_or_default();
    for d in devices {
        let Some(path) = under(root, &d.Path) else {
            continue;
        };
        if path.exists() {
            continue;
        }
        let kind = match d.Type.as_str() {
            "c" | "u" => SFlag::S_IFCHR,
            "b" => SFlag::S_IFBLK,
            "p" => SFlag::S_IFIFO,
            other => {
                warn(format!("device {}: unknown type {other:?}", d.Path));
                continue;
            }
        };
        let mode = if d.FileMode == 0 {
            0o666
        } else {
            d.FileMode & 0o7777
        };
        if let Some(parent) = path.parent() {
            let _ = fs::create_dir_all(parent);
        }
        let r = mknod(
            &path,
            kind,
            Mode::from_bits_truncate(mode),
            makedev(d.Major as u64, d.Minor as u64),
        )
        .and_then(|_| {
            chown(
                &path,
                Some(Uid::from_raw(d.UID)),
                Some(Gid::from_raw(d.GID)),
            )
        });
        if let Err(e) = r {
            warn(format!("device {}: {e}", d.Path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_stay_under_the_rootfs() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join("run"))?;
        fs::create_dir_all(root.join("var"))?;
        symlink("/run", root.join("var/run"))?;
        symlink("../../..", root.join("run/up"))?;
        symlink("loop", root.join("loop"))?;
        assert_eq!(under(root, "/dev/pts"), Some(root.join("dev/pts")));
        assert_eq!(under(root, "/"), Some(root.to_path_buf()));
        assert_eq!(under(root, "relative"), None);
        assert_eq!(under(root, "/a/../../etc"), Some(root.join("etc")));
        assert_eq!(
            under(root, "/var/run/secrets/x"),
            Some(root.join("run/secrets/x"))
        );
        assert_eq!(under(root, "/run/up/etc"), Some(root.join("etc")));
        assert_eq!(under(root, "/loop/x"), None);
        Ok(())
    }
}
