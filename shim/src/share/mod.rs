//! The sandbox's share: what virtiofsd exports to the guest, laid out so
//! that nothing the guest writes can steer a host mount.
//!
//! ```text
//! <base>/            0700, private to root
//!   vm/              the hypervisor's sockets and state
//!   mounts/          host-only: container rootfs and binds are mounted here
//!     <cid>/rootfs   (a shared mount: new mounts propagate to shared/)
//!     <cid>/mounts/<n>-<name>
//!   shared/          read-only bind of mounts/ (slave): what virtiofsd exports
//! ```
//!
//! The guest sees `shared/`, whose directories are read-only: it can write
//! into a container's rootfs and its rw volumes (mounts of their own), but
//! cannot create, rename or replace an entry of the tree the shim mounts
//! into. Targets are still opened without following links and mounts are
//! attached by descriptor ([`fsops`]), and cleanup finds mounts under the
//! host-only tree, never through the share.

pub mod fsops;
pub mod mountinfo;

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

use crate::error::{Error, Result};
use crate::persist::SandboxPaths;
use crate::spec::HostBind;
use fsops::{BindFlags, Leaf};

/// One of containerd's rootfs mounts (`containerd.types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootfsMount {
    pub typ: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Everything one container needs on the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerMounts {
    pub cid: String,
    /// containerd's rootfs mounts; none means `<bundle>/rootfs`.
    pub rootfs: Vec<RootfsMount>,
    pub bundle: PathBuf,
    /// The spec's `root.readonly`: a bind rootfs (a host directory, or an
    /// image layer containerd hands out as a view) is read-only on the host
    /// too; see [`mount_container`] for overlays.
    pub readonly: bool,
    pub binds: Vec<HostBind>,
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

/// The per-mount flags a bind with these options gets.
pub fn bind_flags(options: &[String]) -> BindFlags {
    let (flags, _) = split_options(options);
    BindFlags {
        readonly: flags.contains(MsFlags::MS_RDONLY),
        nosuid: flags.contains(MsFlags::MS_NOSUID),
        nodev: flags.contains(MsFlags::MS_NODEV),
        noexec: flags.contains(MsFlags::MS_NOEXEC),
        recursive: flags.contains(MsFlags::MS_REC),
    }
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

fn errno(what: impl Into<String>, e: nix::errno::Errno) -> Error {
    Error::io(what, std::io::Error::from(e))
}

/// Creates `dir` (and missing parents) and makes it 0700 whatever the umask
/// or an earlier owner left.
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("chmod {}", dir.display()), e))
}

/// Creates the sandbox's directories and the read-only export of its
/// host-only mount tree. On failure nothing is left.
pub fn prepare(paths: &SandboxPaths) -> Result<()> {
    if let Some(root) = paths.base.parent() {
        private_dir(root)?;
    }
    let r = prepare_in(paths);
    if r.is_err() {
        let _ = teardown(paths);
    }
    r
}

fn prepare_in(paths: &SandboxPaths) -> Result<()> {
    let mounts = paths.mounts();
    for d in [&paths.base, &paths.vm, &mounts, &paths.shared] {
        private_dir(d)?;
    }
    let m = |src: Option<&Path>, target: &Path, flags: MsFlags, what: &str| {
        mount(src, target, None::<&str>, flags, None::<&str>)
            .map_err(|e| errno(format!("{what} {}", target.display()), e))
    };
    // mounts/ becomes a mount of its own in a new peer group: what is
    // mounted below it propagates to shared/ and nowhere else.
    m(Some(&mounts), &mounts, MsFlags::MS_BIND, "binding")?;
    m(None, &mounts, MsFlags::MS_PRIVATE, "making private")?;
    m(None, &mounts, MsFlags::MS_SHARED, "making shared")?;
    m(Some(&mounts), &paths.shared, MsFlags::MS_BIND, "binding")?;
    m(None, &paths.shared, MsFlags::MS_SLAVE, "making slave")?;
    m(
        None,
        &paths.shared,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        "read-only remount of",
    )
}

/// Unmounts everything below the sandbox's base (deepest first) and removes
/// it. Missing is fine.
pub fn teardown(paths: &SandboxPaths) -> Result<()> {
    if !paths.base.exists() {
        return Ok(());
    }
    // The export first, so the unmounts below do not propagate into it.
    fsops::unmount(&paths.shared)
        .map_err(|e| errno(format!("unmounting {}", paths.shared.display()), e))?;
    unmount_below(&paths.base)?;
    remove_tree_if_unmounted(&paths.base)
}

fn unmount_below(dir: &Path) -> Result<()> {
    for mp in mountinfo::mounts_below(dir)? {
        fsops::unmount(&mp).map_err(|e| errno(format!("unmounting {}", mp.display()), e))?;
    }
    Ok(())
}

/// Mounts one container's rootfs and binds under `mounts/<cid>`. On
/// failure whatever was mounted is undone.
pub fn mount_container(paths: &SandboxPaths, c: &ContainerMounts) -> Result<()> {
    validate(&c.rootfs)?;
    let r = mount_container_in(paths, c);
    if r.is_err() {
        let _ = unmount_container(paths, &c.cid);
    }
    r
}

fn mount_container_in(paths: &SandboxPaths, c: &ContainerMounts) -> Result<()> {
    let base = fsops::open_dir_nofollow(&paths.mounts())?;
    let cdir = fsops::create_beneath(&base, Path::new(&c.cid), Leaf::Dir)?;
    let target = fsops::create_beneath(&cdir, Path::new("rootfs"), Leaf::Dir)?;
    match c.rootfs.first() {
        None => {
            let src = c.bundle.join("rootfs");
            let flags = BindFlags {
                readonly: c.readonly,
                recursive: true,
                ..BindFlags::default()
            };
            fsops::bind_at(&src, &target, flags)
                .map_err(|e| errno(format!("bind-mounting {}", src.display()), e))?;
        }
        Some(m) if m.typ == "overlay" => {
            // `root.readonly` alone does not make a writable overlay
            // read-only here: its writes land in the container's own
            // upper layer (never an image layer or another host path), and
            // the guest must still create missing mount targets (e.g.
            // /etc/resolv.conf) before it makes the root read-only itself,
            // as runc does. An overlay containerd made read-only (a view,
            // `ctr run --read-only`) is mounted read-only.
            let (flags, data) = split_options(&m.options);
            fsops::mount_fs_at(&m.source, "overlay", flags, &data, &target)
                .map_err(|e| errno("mounting overlay rootfs", e))?;
        }
        Some(m) => {
            let mut flags = bind_flags(&m.options);
            flags.readonly |= c.readonly;
            flags.recursive |= m.typ == "rbind";
            fsops::bind_at(Path::new(&m.source), &target, flags)
                .map_err(|e| errno(format!("bind-mounting {}", m.source), e))?;
        }
    }
    for b in &c.binds {
        let meta = std::fs::metadata(&b.source)
            .map_err(|e| Error::io(format!("bind source {}", b.source.display()), e))?;
        let leaf = if meta.is_dir() { Leaf::Dir } else { Leaf::File };
        let target = fsops::create_beneath(&cdir, Path::new(&b.share_path), leaf)?;
        fsops::bind_at(&b.source, &target, bind_flags(&b.options))
            .map_err(|e| errno(format!("bind-mounting {}", b.source.display()), e))?;
    }
    Ok(())
}

/// Unmounts a container's rootfs and binds and removes its directory.
/// Missing is fine.
pub fn unmount_container(paths: &SandboxPaths, cid: &str) -> Result<()> {
    let dir = paths.container_dir(cid);
    unmount_below(&dir)?;
    unmount_below(&paths.shared.join(cid))?;
    remove_tree_if_unmounted(&dir)
}

/// Removes a directory tree but never descends into a mount point: if
/// something is still mounted below, removal fails instead of deleting
/// files of a container image.
pub fn remove_tree_if_unmounted(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    if !mountinfo::mounts_below(dir)?.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "{} still has mounts below it",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))
}

/// The host-side share of a sandbox, a seam so the Task service can be
/// unit-tested without root.
#[async_trait::async_trait]
pub trait Mounter: Send + Sync {
    /// The sandbox's private directories and its read-only export.
    async fn prepare(&self, paths: &SandboxPaths) -> Result<()>;
    async fn mount_container(&self, paths: &SandboxPaths, mounts: ContainerMounts) -> Result<()>;
    async fn unmount_container(&self, paths: &SandboxPaths, cid: &str) -> Result<()>;
    /// Unmounts everything of the sandbox and removes its directory.
    async fn teardown(&self, paths: &SandboxPaths) -> Result<()>;
}

/// Real mounts.
#[derive(Debug, Default)]
pub struct HostMounter;

#[async_trait::async_trait]
impl Mounter for HostMounter {
    async fn prepare(&self, paths: &SandboxPaths) -> Result<()> {
        let p = paths.clone();
        crate::blocking::run(move || prepare(&p)).await
    }

    async fn mount_container(&self, paths: &SandboxPaths, mounts: ContainerMounts) -> Result<()> {
        let p = paths.clone();
        crate::blocking::run(move || mount_container(&p, &mounts)).await
    }

    async fn unmount_container(&self, paths: &SandboxPaths, cid: &str) -> Result<()> {
        let (p, cid) = (paths.clone(), cid.to_owned());
        crate::blocking::run(move || unmount_container(&p, &cid)).await
    }

    async fn teardown(&self, paths: &SandboxPaths) -> Result<()> {
        let p = paths.clone();
        crate::blocking::run(move || teardown(&p)).await
    }
}

#[cfg(test)]
mod tests;
