//! Gives back QEMU's pages of the kernel and initrd files once the guest
//! has booted.
//!
//! QEMU maps `-kernel` and `-initrd` and keeps the mappings for a machine
//! reset, which never comes (`-no-reboot`; a guest reboot ends QEMU). The
//! pages it read at boot stay mapped for the VM's whole life: ~16 MiB of
//! each pod's host memory. `process_madvise(MADV_PAGEOUT)` reclaims the
//! ones only this QEMU maps; if it ever reads them again, they come back
//! from the file. Pages other VMs map too are left alone (the kernel skips
//! shared pages), so pods booted from one image keep sharing them.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// `[start, end)` of each mapping in `maps` (the text of `/proc/<pid>/maps`)
/// whose file is one of `files`.
pub fn mappings_of(maps: &str, files: &[PathBuf]) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            // start-end perms offset dev inode path
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let path = fields.nth(4)?;
            if !files.iter().any(|f| Path::new(path) == f) {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            (end > start).then_some((start, end))
        })
        .collect()
}

/// Pages out `pid`'s mappings of `files`; returns the bytes of mapping
/// advised. Blocking (reads `/proc`): call from a blocking thread.
pub fn page_out(pid: u32, files: &[PathBuf]) -> io::Result<usize> {
    let files: Vec<PathBuf> = files
        .iter()
        .map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.clone()))
        .collect();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let ranges = mappings_of(&maps, &files);
    if ranges.is_empty() {
        return Ok(0);
    }
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and is owned here alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let iov: Vec<libc::iovec> = ranges
        .iter()
        .map(|&(start, end)| libc::iovec {
            iov_base: start as *mut libc::c_void,
            iov_len: end - start,
        })
        .collect();
    // SAFETY: the iovecs describe ranges of the target's address space and
    // are only read by the kernel; a range QEMU unmapped meanwhile fails the
    // call (ENOMEM) without touching anything else.
    let advised = unsafe {
        libc::syscall(
            libc::SYS_process_madvise,
            std::os::fd::AsRawFd::as_raw_fd(&pidfd),
            iov.as_ptr(),
            iov.len(),
            libc::MADV_PAGEOUT,
            0,
        )
    };
    if advised < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(advised as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0000000-55d0c0100000 r--p 00000000 fe:00 123 /usr/bin/qemu-system-x86_64
7f03e4400000-7f03e480e000 r--p 00000000 fe:00 5390571    /img/initrd.img
7f03e4a00000-7f03e5600000 rw-p 00000000 fe:00 5390569    /img/vmlinux
7f03e5fff000-7f03f5fff000 rw-s 00000000 00:01 8118       /memfd:memory-backend-memfd (deleted)
7f03f6000000-7f03f8000000 rwxp 00000000 00:00 0
";

    #[test]
    fn finds_the_kernel_and_initrd_mappings_only() {
        let files = [
            PathBuf::from("/img/vmlinux"),
            PathBuf::from("/img/initrd.img"),
        ];
        assert_eq!(
            mappings_of(MAPS, &files),
            vec![
                (0x7f03e4400000, 0x7f03e480e000),
                (0x7f03e4a00000, 0x7f03e5600000)
            ]
        );
        assert!(mappings_of(MAPS, &[PathBuf::from("/img/vmlinu")]).is_empty());
    }

    /// On ourselves: a mapped file's pages leave our resident set.
    #[test]
    fn pages_out_a_mapped_file() {
        use std::io::Write;
        // On a disk, not tmpfs: shmem pages cannot be paged out without swap.
        let dir = tempfile::tempdir_in("/var/tmp").expect("tempdir");
        let path = dir.path().join("blob");
        let len = 4 << 20;
        std::fs::File::create(&path)
            .and_then(|mut f| {
                f.write_all(&vec![7u8; len])?;
                f.sync_all() // clean pages: reclaimable at once
            })
            .expect("write");
        let file = std::fs::File::open(&path).expect("open");
        // SAFETY: a fresh private read-only mapping of a file we own.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let resident = |addr: *mut libc::c_void| -> usize {
            let mut vec = vec![0u8; len / 4096];
            // SAFETY: mincore on our own live mapping, one byte per page.
            let r = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
            assert_eq!(r, 0);
            vec.iter().filter(|b| **b & 1 == 1).count()
        };
        let mut sum = 0u64;
        for i in (0..len).step_by(4096) {
            // SAFETY: reading within the mapping.
            sum += u64::from(unsafe { *(addr as *const u8).add(i) });
        }
        assert_eq!(sum, 7 * (len as u64 / 4096));
        assert_eq!(resident(addr), len / 4096, "touched: all resident");
        let advised = page_out(std::process::id(), std::slice::from_ref(&path)).expect("page out");
        assert_eq!(advised, len);
        assert!(
            resident(addr) < len / 4096 / 2,
            "most pages reclaimed: {} of {} still resident",
            resident(addr),
            len / 4096
        );
        // SAFETY: unmapping what we mapped.
        unsafe { libc::munmap(addr, len) };
    }
}
