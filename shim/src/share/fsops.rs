//! Path and mount operations that never follow a symbolic link.
//!
//! Every directory below a sandbox's base is opened component by component
//! with `O_NOFOLLOW`, and mounts are attached to the opened descriptor
//! (`/proc/self/fd/N`, `move_mount`), so a link planted anywhere on the way
//! cannot redirect a mount to another host path.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// What to create at the end of a path that does not exist yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Dir,
    File,
}

fn io_err(what: impl Into<String>, e: Errno) -> crate::error::Error {
    crate::error::Error::io(what, std::io::Error::from(e))
}

/// Opens `path` (absolute, no `..`) as an `O_PATH` directory descriptor,
/// refusing any symbolic link on the way.
pub fn open_dir_nofollow(path: &Path) -> crate::error::Result<OwnedFd> {
    let root =
        open_at(None, Path::new("/"), OFlag::O_DIRECTORY).map_err(|e| io_err("opening /", e))?;
    let rel = path.strip_prefix("/").map_err(|_| {
        crate::error::Error::InvalidArgument(format!("{} is not absolute", path.display()))
    })?;
    walk(&root, rel, None).map_err(|e| io_err(format!("opening {}", path.display()), e))
}

/// Opens `rel` below `dir`, creating what is missing: directories on the
/// way (mode 0700) and `leaf` at the end. No component may be a symbolic
/// link or `..`. Returns an `O_PATH` descriptor of the leaf.
pub fn create_beneath(dir: &OwnedFd, rel: &Path, leaf: Leaf) -> crate::error::Result<OwnedFd> {
    walk(dir, rel, Some(leaf)).map_err(|e| io_err(format!("creating {}", rel.display()), e))
}

/// Opens `rel` below `dir` without following links and without creating.
pub fn open_beneath(dir: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    walk(dir, rel, None)
}

fn walk(dir: &OwnedFd, rel: &Path, create: Option<Leaf>) -> Result<OwnedFd, Errno> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .map(|c| match c {
            Component::Normal(n) => Ok(n),
            Component::CurDir => Ok(std::ffi::OsStr::new(".")),
            _ => Err(Errno::EINVAL),
        })
        .collect::<Result<_, _>>()?;
    let mut cur = dup(dir)?;
    for (i, name) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        let want = if last { create } else { Some(Leaf::Dir) };
        let name = Path::new(name);
        cur = match open_at(Some(cur.as_raw_fd()), name, OFlag::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create.is_some() => {
                match want {
                    Some(Leaf::File) => {
                        let fd = open_at(
                            Some(cur.as_raw_fd()),
                            name,
                            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
                        )?;
                        drop(fd);
                    }
                    _ => match nix::sys::stat::mkdirat(
                        Some(cur.as_raw_fd()),
                        name,
                        Mode::from_bits_truncate(0o700),
                    ) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(e),
                    },
                }
                open_at(Some(cur.as_raw_fd()), name, OFlag::empty())?
            }
            Err(e) => return Err(e),
        };
        if !last || want == Some(Leaf::Dir) {
            // O_PATH|O_NOFOLLOW opens a link itself: refuse it explicitly.
            let st = nix::sys::stat::fstat(cur.as_raw_fd())?;
            if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
                return Err(Errno::ENOTDIR);
            }
        } else {
            let st = nix::sys::stat::fstat(cur.as_raw_fd())?;
            if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
                return Err(Errno::ELOOP);
            }
        }
    }
    Ok(cur)
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, Errno> {
    fd.try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EBADF)))
}

/// `openat(dir, name, O_PATH|O_NOFOLLOW|O_CLOEXEC|extra)` (plain open for O_CREAT).
fn open_at(dir: Option<RawFd>, name: &Path, extra: OFlag) -> Result<OwnedFd, Errno> {
    let mut flags = OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra;
    if !extra.contains(OFlag::O_CREAT) {
        flags |= OFlag::O_PATH;
    }
    let fd = nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600))?;
    // SAFETY: openat just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The magic-link path of an open descriptor, for calls that take a path.
pub fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Per-mount flags of a bind (`ro`, `nosuid`, `nodev`, `noexec`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BindFlags {
    pub readonly: bool,
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub recursive: bool,
}

impl BindFlags {
    fn attrs(self) -> u64 {
        let mut a = 0;
        if self.readonly {
            a |= libc::MOUNT_ATTR_RDONLY;
        }
        if self.nosuid {
            a |= libc::MOUNT_ATTR_NOSUID;
        }
        if self.nodev {
            a |= libc::MOUNT_ATTR_NODEV;
        }
        if self.noexec {
            a |= libc::MOUNT_ATTR_NOEXEC;
        }
        a
    }
}

fn cstring(path: &Path) -> Result<CString, Errno> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Errno::EINVAL)
}

/// Binds `source` onto the object `target` refers to. The bind is cloned
/// detached (`open_tree`), gets its flags there (`mount_setattr`, recursive
/// for `rbind`), and only then is attached (`move_mount` to the descriptor):
/// it is never writable, not even for an instant, and the copies mount
/// propagation makes of it (the sandbox's export) are read-only too.
pub fn bind_at(source: &Path, target: &OwnedFd, flags: BindFlags) -> Result<(), Errno> {
    let src = cstring(source)?;
    let mut open_flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if flags.recursive {
        open_flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: a valid NUL-terminated path and flags; the result is checked.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            open_flags,
        )
    };
    if tree < 0 {
        return Err(Errno::last());
    }
    let tree_fd = i32::try_from(tree).map_err(|_| Errno::EBADF)?;
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree_fd) };
    set_attrs(&tree, flags.attrs(), flags.recursive)?;
    let empty = c"";
    // SAFETY: both descriptors are open; empty paths with the EMPTY_PATH flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            target.as_raw_fd(),
            empty.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Sets mount attributes on the mount `fd` refers to (its root).
pub fn set_attrs(fd: &OwnedFd, attrs: u64, recursive: bool) -> Result<(), Errno> {
    if attrs == 0 {
        return Ok(());
    }
    let attr = libc::mount_attr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut at = libc::AT_EMPTY_PATH;
    if recursive {
        at |= libc::AT_RECURSIVE;
    }
    let empty = c"";
    // SAFETY: a valid descriptor, an empty path with AT_EMPTY_PATH, and a
    // mount_attr of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            empty.as_ptr(),
            at,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Mounts a file system (overlay) onto the directory `target` refers to.
pub fn mount_fs_at(
    source: &str,
    fstype: &str,
    flags: nix::mount::MsFlags,
    data: &str,
    target: &OwnedFd,
) -> Result<(), Errno> {
    nix::mount::mount(
        Some(source),
        fd_path(target).as_str(),
        Some(fstype),
        flags,
        Some(data),
    )
}

/// Unmounts (detaching) the mount at `path`, never following a final link.
/// Not mounted or missing is fine.
pub fn unmount(path: &Path) -> Result<(), Errno> {
    match nix::mount::umount2(
        path,
        nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW,
    ) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_below_and_refuses_links_and_dotdot() {
        let d = tempfile::tempdir().expect("tempdir");
        let base = open_dir_nofollow(d.path()).expect("open base");
        let leaf = create_beneath(&base, Path::new("a/b/c"), Leaf::Dir).expect("create");
        assert!(d.path().join("a/b/c").is_dir());
        drop(leaf);
        create_beneath(&base, Path::new("a/f"), Leaf::File).expect("file");
        assert!(d.path().join("a/f").is_file());
        // Private: 0700 whatever the umask.
        let mode = std::fs::metadata(d.path().join("a/b")).expect("meta");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );

        let outside = tempfile::tempdir().expect("outside");
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/link")).expect("symlink");
        for rel in ["a/link/x", "a/link", "a/../a/b", "a/f/x"] {
            let e = create_beneath(&base, Path::new(rel), Leaf::Dir);
            assert!(e.is_err(), "{rel} must be refused");
        }
        assert!(
            std::fs::read_dir(outside.path())
                .expect("ls")
                .next()
                .is_none(),
            "nothing created through the link"
        );
        assert!(open_dir_nofollow(&d.path().join("a/link")).is_err());
        assert!(open_dir_nofollow(Path::new("relative")).is_err());
    }
}
