//! Starting the container helper (`/proc/self/exe __kata-container-init`)
//! with posix_spawn(3) rather than `std::process::Command` + `pre_exec`.
//!
//! Why: a `pre_exec` closure makes std fork the agent, which copies its page
//! tables and write-protects every page it has touched; glibc's posix_spawn
//! clones with CLONE_VM|CLONE_VFORK and only runs the file actions before the
//! exec. Under TCG the spawn took 50 ms by fork, 6 ms this way. The file
//! actions also put the sync socket on its fixed descriptor, which is what
//! `pre_exec` was for.
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

/// What the helper gets on 0, 1, 2: the given descriptors, or /dev/null.
pub enum Stdio {
    Fds([RawFd; 3]),
    Null,
}

/// Owns a `posix_spawn_file_actions_t` (destroyed on drop).
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<Self> {
        let mut fa = MaybeUninit::uninit();
        // SAFETY: init writes the whole structure.
        check(unsafe { libc::posix_spawn_file_actions_init(fa.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        Ok(Self(unsafe { fa.assume_init() }))
    }

    fn dup2(&mut self, fd: RawFd, to: RawFd) -> io::Result<()> {
        // SAFETY: self.0 is initialised; the descriptors are plain integers.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, to) })
    }

    fn open_null(&mut self, to: RawFd) -> io::Result<()> {
        // SAFETY: self.0 is initialised; the path is a NUL-terminated literal.
        check(unsafe {
            libc::posix_spawn_file_actions_addopen(
                &mut self.0,
                to,
                c"/dev/null".as_ptr(),
                libc::O_RDWR,
                0,
            )
        })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialised in new() and destroyed only here.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// Owns a `posix_spawnattr_t` (destroyed on drop).
struct Attr(libc::posix_spawnattr_t);

impl Attr {
    /// Signal mask emptied and every catchable signal back to its default
    /// action: the agent ignores SIGPIPE (Rust's runtime does), and ignored
    /// signals would stay ignored across exec into the container.
    fn clean_signals() -> io::Result<Self> {
        let mut a = MaybeUninit::uninit();
        // SAFETY: init writes the whole structure.
        check(unsafe { libc::posix_spawnattr_init(a.as_mut_ptr()) })?;
        // SAFETY: initialised just above.
        let mut attr = Self(unsafe { a.assume_init() });
        // SAFETY: sigset_t values are filled by sigemptyset/sigaddset before
        // use; attr.0 is initialised.
        unsafe {
            let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(empty.as_mut_ptr());
            let empty = empty.assume_init();
            // Every signal 1–64 but SIGKILL/SIGSTOP. Not by sigaddset: glibc
            // refuses its internal signals (32, 33) there, and its spawn code
            // sets those to SIG_IGN in the child unless they are in this set,
            // an ignore that survives exec into the container. The set is a
            // bit array (bit n-1 = signal n) starting with one 64-bit word.
            let mut defaults = empty;
            let keep = (1u64 << (libc::SIGKILL - 1)) | (1u64 << (libc::SIGSTOP - 1));
            *std::ptr::addr_of_mut!(defaults).cast::<u64>() = !keep;
            check(libc::posix_spawnattr_setsigmask(&mut attr.0, &empty))?;
            check(libc::posix_spawnattr_setsigdefault(&mut attr.0, &defaults))?;
            check(libc::posix_spawnattr_setflags(
                &mut attr.0,
                (libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
            ))?;
        }
        Ok(attr)
    }
}

impl Drop for Attr {
    fn drop(&mut self) {
        // SAFETY: initialised in clean_signals() and destroyed only here.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    match rc {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// Spawns `program arg` with an empty environment, `stdio` on 0–2 and `sync`
/// on `sync_to`; returns the child's pid. Descriptors in `stdio` and `sync`
/// must not be 0–2 or `sync_to` themselves (the agent's 0–2 are always open,
/// and the caller moves `sync` off `sync_to`).
pub fn spawn(
    program: &str,
    arg: &str,
    stdio: &Stdio,
    sync: RawFd,
    sync_to: RawFd,
) -> io::Result<i32> {
    if sync == sync_to || sync <= 2 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("sync descriptor {sync} collides with the helper's layout"),
        ));
    }
    let mut fa = FileActions::new()?;
    // 0–2 first: their sources are ≥ 3, so the sync dup2 after them cannot
    // be overwritten, and a source sitting on `sync_to` is copied before.
    match stdio {
        Stdio::Fds(fds) => {
            for (to, fd) in fds.iter().enumerate() {
                fa.dup2(*fd, to as RawFd)?;
            }
        }
        Stdio::Null => {
            for to in 0..3 {
                fa.open_null(to)?;
            }
        }
    }
    fa.dup2(sync, sync_to)?;
    let attr = Attr::clean_signals()?;
    let nul = |s: &str| CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e));
    let (program, arg) = (nul(program)?, nul(arg)?);
    let argv = [
        program.as_ptr().cast_mut(),
        arg.as_ptr().cast_mut(),
        std::ptr::null_mut(),
    ];
    let envp = [std::ptr::null_mut()];
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: NUL-terminated strings
    // and NULL-terminated arrays that outlive it, initialised actions/attrs.
    check(unsafe {
        libc::posix_spawn(
            &mut pid,
            program.as_ptr(),
            &fa.0,
            &attr.0,
            argv.as_ptr(),
            envp.as_ptr(),
        )
    })?;
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills both slots; each is owned once wrapped.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors from pipe2.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    fn wait(pid: i32) -> i32 {
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        libc::WEXITSTATUS(status)
    }

    /// The child sees stdout on 1 and the sync socket on the fixed
    /// descriptor, an empty environment, default signal actions, none of our
    /// close-on-exec descriptors.
    #[test]
    fn child_gets_stdio_and_sync_on_their_descriptors() {
        let (out_r, out_w) = pipe();
        let (in_r, _in_w) = pipe();
        let (_err_r, err_w) = pipe();
        let (mut ours, theirs) = UnixStream::pair().expect("socketpair");
        let ours_fd = ours.as_raw_fd().to_string();
        let script = "echo out; env | wc -l; echo sync >&7; \
                      grep '^SigIgn' /proc/self/status; ls /proc/self/fd | tr '\\n' ' '";
        // sh -c needs the script as its own argument: go through a tiny wrapper.
        let prog = std::env::temp_dir().join(format!("spawn-test-{}.sh", std::process::id()));
        std::fs::write(&prog, format!("#!/bin/sh\n{script}\n")).expect("script");
        std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let pid = spawn(
            prog.to_str().expect("utf-8"),
            "arg",
            &Stdio::Fds([in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()]),
            theirs.as_raw_fd(),
            7,
        )
        .expect("spawn");
        drop((out_w, err_w, theirs));
        let mut out = String::new();
        std::fs::File::from(out_r)
            .read_to_string(&mut out)
            .expect("read");
        let mut sync = String::new();
        ours.read_to_string(&mut sync).expect("sync");
        assert_eq!(wait(pid), 0);
        let _ = std::fs::remove_file(&prog);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "out");
        // `env` in an empty environment prints at most what sh itself sets.
        assert!(lines[1].trim().parse::<u32>().expect("count") <= 3, "{out}");
        assert_eq!(sync.trim(), "sync");
        // No signal ignored, glibc's internal 32 and 33 included.
        assert_eq!(lines[2], "SigIgn:\t0000000000000000", "{out}");
        // The sync socket on 7; none of our close-on-exec descriptors.
        let fds: Vec<&str> = lines[3].split_whitespace().collect();
        assert!(fds.contains(&"7"), "{out}");
        assert!(!fds.contains(&ours_fd.as_str()), "{out}");
    }

    #[test]
    fn a_sync_descriptor_on_the_target_or_stdio_is_refused() {
        for fd in [1, 7] {
            let e = spawn("/bin/true", "x", &Stdio::Null, fd, 7).expect_err("refused");
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
        let (_a, b) = UnixStream::pair().expect("socketpair");
        // Off 7 whatever other tests hold open (on 7 it would be refused as above).
        // SAFETY: F_DUPFD_CLOEXEC on a live descriptor; the result is checked.
        let high = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 100) };
        assert!(
            high >= 100,
            "F_DUPFD_CLOEXEC: {}",
            io::Error::last_os_error()
        );
        // SAFETY: a new descriptor, owned here alone.
        let b = unsafe { OwnedFd::from_raw_fd(high) };
        let e = spawn("/nonexistent", "x", &Stdio::Null, b.as_raw_fd(), 7).expect_err("no program");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}
