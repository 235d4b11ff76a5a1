//! Container rootfs on the host side: containerd's rootfs mounts (overlay,
//! bind) are mounted under the sandbox's shared directory, which virtiofsd
//! exports to the guest.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::error::{Error, Result};

/// One of containerd's rootfs mounts (`containerd.types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Splits mount options into flags and the filesystem's data string.
fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            _ => data.push(o.as_str()),
        }
    }
    (flags, data.join(","))
}

/// Checks the mounts before anything is mounted, so a bad request leaves nothing behind.
pub fn validate(mounts: &[RootfsMount]) -> Result<()> {
    if mounts.len() > 1 {
        return Err(Error::InvalidArgument(format!(
            "{} rootfs mounts given; one (overlay or bind) is supported",
            mounts.len()
        )));
    }
    for m in mounts {
        if !matches!(m.typ.as_str(), "overlay" | "bind" | "rbind") {
            return Err(Error::InvalidArgument(format!(
                "rootfs mount type {:?} is not supported (overlay, bind)",
                m.typ
            )));
        }
    }
    Ok(())
}

/// Mounts the rootfs at `target` (created). With no mounts, `bundle/rootfs`
/// is bind-mounted (a pre-populated bundle).
pub async fn mount_rootfs(
    mounts: Vec<RootfsMount>,
    bundle: PathBuf,
    target: PathBuf,
) -> Result<()> {
    validate(&mounts)?;
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&target)
            .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        let result = match mounts.first() {
            None => {
                let src = bundle.join("rootfs");
                mount(
                    Some(&src),
                    &target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .map_err(|e| Error::io(format!("bind-mounting {}", src.display()), e.into()))
            }
            Some(m) => {
                let (mut flags, data) = split_options(&m.options);
                let fstype = if m.typ == "overlay" {
                    Some("overlay")
                } else {
                    None
                };
                if m.typ != "overlay" {
                    flags |= MsFlags::MS_BIND;
                }
                mount(
                    Some(m.source.as_str()),
                    &target,
                    fstype,
                    flags,
                    Some(data.as_str()),
                )
                .map_err(|e| Error::io(format!("mounting {} rootfs", m.typ), e.into()))
            }
        };
        if result.is_err() {
            let _ = std::fs::remove_dir(&target);
        }
        result
    })
    .await
    .map_err(|e| Error::io("mount task", std::io::Error::other(e)))?
}

/// Bind-mounts a host file or directory at `target` (created to match).
pub async fn bind_share(source: PathBuf, target: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let meta = std::fs::metadata(&source)
            .map_err(|e| Error::io(format!("bind source {}", source.display()), e))?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
        }
        if meta.is_dir() {
            std::fs::create_dir_all(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        }
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
        mount(
            Some(&source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| Error::io(format!("bind-mounting {}", source.display()), e.into()))
    })
    .await
    .map_err(|e| Error::io("mount task", std::io::Error::other(e)))?
}

/// Mount points at or below `dir`, deepest first.
fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("reading mountinfo", e))?;
    let prefix = dir.to_string_lossy().into_owned();
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| *mp == prefix || mp.starts_with(&format!("{prefix}/")))
        .map(PathBuf::from)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    Ok(found)
}

/// Unmounts everything under a container's directory on the share (rootfs
/// and shared binds) and removes it. Missing is fine.
pub async fn unmount_rootfs(container_dir: PathBuf) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        for mp in mounts_below(&container_dir)? {
            match umount2(&mp, MntFlags::MNT_DETACH) {
                Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(Error::io(format!("unmounting {}", mp.display()), e.into())),
            }
        }
        remove_tree_if_unmounted(&container_dir)
    })
    .await
    .map_err(|e| Error::io("unmount task", std::io::Error::other(e)))?
}

/// Removes a directory tree but never descends into a mount point: if
/// something is still mounted below, removal fails instead of deleting
/// files of a container image.
pub fn remove_tree_if_unmounted(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !mounts_below(dir)?.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "{} still has mounts below it",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
}

/// The host-side mounting of container rootfs, a seam so the Task service
/// can be unit-tested without root.
#[async_trait::async_trait]
pub trait Mounter: Send + Sync {
    async fn mount(&self, mounts: Vec<RootfsMount>, bundle: PathBuf, target: PathBuf)
        -> Result<()>;
    async fn unmount(&self, container_dir: PathBuf) -> Result<()>;
    async fn bind(&self, source: PathBuf, target: PathBuf) -> Result<()>;
}

/// Real mounts with mount(2).
pub struct HostMounter;

#[async_trait::async_trait]
impl Mounter for HostMounter {
    async fn mount(
        &self,
        mounts: Vec<RootfsMount>,
        bundle: PathBuf,
        target: PathBuf,
    ) -> Result<()> {
        mount_rootfs(mounts, bundle, target).await
    }

    async fn unmount(&self, container_dir: PathBuf) -> Result<()> {
        unmount_rootfs(container_dir).await
    }

    async fn bind(&self, source: PathBuf, target: PathBuf) -> Result<()> {
        bind_share(source, target).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_flags_from_overlay_data() {
        let (flags, data) = split_options(&[
            "ro".into(),
            "lowerdir=/a:/b".into(),
            "upperdir=/u".into(),
            "workdir=/w".into(),
            "nodev".into(),
        ]);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NODEV));
        assert_eq!(data, "lowerdir=/a:/b,upperdir=/u,workdir=/w");
    }

    #[test]
    fn rejects_unknown_types_before_mounting() {
        let m = RootfsMount {
            typ: "zfs".into(),
            source: "x".into(),
            options: vec![],
        };
        let err = validate(&[m]).unwrap_err();
        assert!(err.to_string().contains("zfs"), "{err}");
    }
}
