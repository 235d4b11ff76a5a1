//! Guest CIDs for kernel vhost-vsock, allocated host-wide.
//!
//! Every shim daemon is its own process, so an in-process counter hands the
//! same CIDs to every pod and QEMU then fails with "address in use" until a
//! free one is hit. Here a CID is owned by whoever holds an exclusive
//! `flock` on `<dir>/<cid>`: the kernel drops the lock when its owner dies,
//! so nothing stale has to be cleaned up, and files are never unlinked
//! (unlinking would let two owners lock two different inodes of one name).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where the shim's CID leases live.
pub const DEFAULT_CID_DIR: &str = "/run/kata-shim/vsock-cids";
/// CIDs 0-2 are reserved (hypervisor, local, host).
pub const FIRST_GUEST_CID: u32 = 3;
/// How many CIDs one search looks at before giving up.
const SEARCH_SPAN: u32 = 65_536;

/// Hands out CIDs no other process on this host holds.
#[derive(Debug, Clone)]
pub struct CidAllocator {
    dir: PathBuf,
}

impl Default for CidAllocator {
    fn default() -> Self {
        Self::new(DEFAULT_CID_DIR)
    }
}

/// A CID owned until this is dropped.
#[derive(Debug)]
pub struct CidLease {
    pub cid: u32,
    _lock: File,
}

impl CidAllocator {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// Leases the first free CID at or after `from` (blocking: a few
    /// syscalls per CID tried).
    pub fn lease_from(&self, from: u32) -> Result<CidLease> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |what: String| move |source| Error::Io { what, source };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(io(format!("creating {}", self.dir.display())))?;
        let from = from.max(FIRST_GUEST_CID);
        for cid in (from..u32::MAX).take(SEARCH_SPAN as usize) {
            let path = self.dir.join(cid.to_string());
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io(format!("opening {}", path.display())))?;
            if try_lock(&file).map_err(io(format!("locking {}", path.display())))? {
                return Ok(CidLease { cid, _lock: file });
            }
        }
        Err(Error::Io {
            what: format!("no free guest CID in {}", self.dir.display()),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: `Ok(false)` when another owner holds it.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on an open descriptor has no memory-safety preconditions.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hundreds_of_sandboxes_get_distinct_cids() {
        let d = tempfile::tempdir().expect("tempdir");
        // Each daemon has its own allocator; they share only the directory.
        let daemons: Vec<CidAllocator> = (0..4).map(|_| CidAllocator::new(d.path())).collect();
        let mut leases = Vec::new();
        for i in 0..300 {
            leases.push(daemons[i % 4].lease_from(FIRST_GUEST_CID).expect("lease"));
        }
        let mut cids: Vec<u32> = leases.iter().map(|l| l.cid).collect();
        cids.sort_unstable();
        cids.dedup();
        assert_eq!(cids.len(), 300, "no CID handed out twice");
        assert_eq!(cids.first(), Some(&3));
        assert_eq!(cids.last(), Some(&302));
        // A pod that ends frees its CID for the next one.
        let freed = leases.remove(10).cid;
        assert_eq!(daemons[0].lease_from(3).expect("lease").cid, freed);
    }

    #[test]
    fn a_dead_owners_cid_is_free_again_and_links_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let alloc = CidAllocator::new(d.path());
        // Another process holds CID 3 (flock(1) on its fd 9), then dies.
        let path = d.path().join("3");
        std::fs::write(&path, b"").expect("file");
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 9>'{}'; flock 9; exec sleep 30",
                path.display()
            ))
            .spawn()
            .expect("sh");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while try_lock(&File::open(&path).expect("open")).expect("try")
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(alloc.lease_from(3).expect("lease").cid, 4, "3 is held");
        holder.kill().expect("kill");
        holder.wait().expect("wait");
        assert_eq!(alloc.lease_from(3).expect("lease").cid, 3, "freed by death");

        std::os::unix::fs::symlink("/etc/passwd", d.path().join("7")).expect("symlink");
        assert!(
            alloc.lease_from(7).is_err(),
            "a planted link is not followed"
        );
    }
}
