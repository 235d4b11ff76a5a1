//! The container runtime, run in a helper process: the agent re-executes
//! itself as `kata-agent __kata-container-init` for every container process.
//!
//! Why our own small runtime instead of libcontainer (youki): the guest needs
//! only namespaces, a handful of mounts, a cgroup v2 directory and exec; a
//! few hundred lines on `nix` build in seconds, add no dependency tree to the
//! static binary and are easy to follow. Why a re-executed helper instead of
//! fork() in the agent: the agent is multi-threaded (tokio), and between fork
//! and exec only async-signal-safe code may run there; the helper is
//! single-threaded, so it may allocate, log over the socket, `setns` into a
//! mount namespace and `unshare` freely.
//!
//! Shape: the helper joins/creates the namespaces, forks the container
//! process (which, after `unshare(CLONE_NEWPID)`, is PID 1 of the new pid
//! namespace), reports its pid, then waits for it and exits with its status
//! (the exit code, or 128 + signal). The agent therefore waits on the helper
//! (its own child) and signals the container process directly. See `sync`
//! for the handshake.
mod caps;
pub mod error;
mod rootfs;
pub mod seccomp;

use std::convert::Infallible;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::{fcntl, open, FcntlArg, FdFlag, OFlag};
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{
    chdir, chroot, dup2, execve, fchdir, fork, setgid, setgroups, sethostname, setuid,
};
use nix::unistd::{ForkResult, Gid, Uid};
use protocols::oci::Spec;
use protocols::protobuf::Message;

use crate::sync::{self, read_frame, write_frame};

/// argv[1] that turns the agent binary into the helper.
pub const HELPER_ARG: &str = "__kata-container-init";
/// The helper's end of the sync socket.
pub const SYNC_FD: RawFd = 3;
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

use error::{err, last_os, Res, StepError};

/// Maps an OCI namespace type to its clone flag; None for unknown types.
pub fn namespace_flag(kind: &str) -> Option<CloneFlags> {
    Some(match kind {
        "pid" => CloneFlags::CLONE_NEWPID,
        "network" | "net" => CloneFlags::CLONE_NEWNET,
        "mount" | "mnt" => CloneFlags::CLONE_NEWNS,
        "ipc" => CloneFlags::CLONE_NEWIPC,
        "uts" => CloneFlags::CLONE_NEWUTS,
        "user" => CloneFlags::CLONE_NEWUSER,
        "cgroup" => CloneFlags::CLONE_NEWCGROUP,
        _ => return None,
    })
}

/// Entry point of the helper process; never returns.
pub fn helper_main() -> ! {
    // SAFETY: the agent dup2'ed its socketpair end onto SYNC_FD for us and
    // nothing else in this fresh process owns that descriptor.
    let mut sock = unsafe { UnixStream::from_raw_fd(SYNC_FD) };
    // Close-on-exec, so the container's exec closes it and the agent sees EOF.
    let _ = fcntl(SYNC_FD, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    let code = match helper(&mut sock) {
        Ok(code) => code,
        Err(e) => {
            let _ = write_frame(&mut sock, sync::ERROR, e.to_string().as_bytes());
            1
        }
    };
    std::process::exit(code)
}

struct Config {
    mode: u8,
    init_pid: u32,
    /// The container's cgroup directory in the agent's view ("" = none).
    cgroup: String,
    spec: Spec,
}

/// Encodes a config frame payload: mode, init pid (exec), the cgroup
/// directory (u16 length + bytes), the spec.
pub fn encode_config(mode: u8, init_pid: u32, cgroup: &str, spec: &Spec) -> Vec<u8> {
    let mut out = vec![mode];
    out.extend_from_slice(&init_pid.to_le_bytes());
    let cgroup = &cgroup.as_bytes()[..cgroup.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(cgroup.len() as u16).to_le_bytes());
    out.extend_from_slice(cgroup);
    out.extend_from_slice(&spec.write_to_bytes().unwrap_or_default());
    out
}

fn read_config(sock: &mut UnixStream) -> Res<Config> {
    let bad = || StepError::Protocol("malformed config frame".into());
    match read_frame(sock).map_err(err("reading config"))? {
        Some((sync::CONFIG, p)) if p.len() >= 7 => {
            let len = usize::from(u16::from_le_bytes([p[5], p[6]]));
            let cgroup = p.get(7..7 + len).ok_or_else(bad)?;
            Ok(Config {
                mode: p[0],
                init_pid: u32::from_le_bytes([p[1], p[2], p[3], p[4]]),
                cgroup: String::from_utf8(cgroup.to_vec()).map_err(|_| bad())?,
                spec: Spec::parse_from_bytes(&p[7 + len..])
                    .map_err(|e| StepError::Protocol(format!("decoding spec: {e}")))?,
            })
        }
        _ => Err(StepError::Protocol("expected a config frame".into())),
    }
}

/// clone3's argument (linux/sched.h, CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks, the child born in the cgroup `dir` when given and the kernel can
/// (clone3 CLONE_INTO_CGROUP, Linux 5.7+): the agent then need not move it,
/// which costs an RCU grace period. Returns (fork result, born in cgroup).
fn fork_into(dir: Option<&File>) -> Res<(ForkResult, bool)> {
    if let Some(dir) = dir {
        let args = CloneArgs {
            flags: CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir.as_raw_fd() as u64,
            ..Default::default()
        };
        // SAFETY: without CLONE_VM clone3 duplicates the process like fork(2);
        // the helper is single-threaded, so the child may run any code.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match pid {
            0 => return Ok((ForkResult::Child, true)),
            p if p > 0 => {
                let child = nix::unistd::Pid::from_raw(p as libc::pid_t);
                return Ok((ForkResult::Parent { child }, true));
            }
            // ENOSYS, EINVAL, a cgroup we may not enter…: fork, the agent moves it.
            _ => {}
        }
    }
    // SAFETY: the helper is single-threaded, so the child may run any code.
    Ok((unsafe { fork() }.map_err(err("fork"))?, false))
}

fn expect(sock: &mut UnixStream, tag: u8) -> Res<()> {
    match read_frame(sock).map_err(err("sync socket"))? {
        Some((t, _)) if t == tag => Ok(()),
        Some((t, _)) => Err(StepError::Protocol(format!(
            "unexpected frame {:?}",
            t as char
        ))),
        // The agent gave up on this process.
        None => std::process::exit(1),
    }
}

// Over 80 lines on purpose: namespace joins, rootfs and fork in the order the kernel demands, in
// the helper process; one piece keeps that order readable.
fn helper(sock: &mut UnixStream) -> Res<i32> {
    let cfg = read_config(sock)?;
    umask(Mode::empty());
    // Opened before we enter the container's mount namespace.
    let cgroup_dir = match cfg.cgroup.as_str() {
        "" => None,
        dir => File::open(dir).ok(),
    };
    // Exec: the container's root, opened before we enter its mount namespace.
    let root = if cfg.mode == sync::MODE_EXEC {
        let path = format!("/proc/{}/root", cfg.init_pid);
        Some(
            open(
                path.as_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(err(&path))?,
        )
    } else {
        None
    };
    let mut joins = Vec::new();
    let mut create = CloneFlags::empty();
    let mut new_cgroup = false;
    for ns in cfg.spec.Linux.Namespaces.iter() {
        let flag = namespace_flag(&ns.Type)
            .ok_or_else(|| StepError::Spec(format!("unknown namespace {:?}", ns.Type)))?;
        if flag == CloneFlags::CLONE_NEWNET || flag == CloneFlags::CLONE_NEWUSER {
            // Containers stay in the VM's network namespace (a host netns path means
            // nothing in the guest); user namespaces are not supported.
            continue;
        }
        if !ns.Path.is_empty() {
            joins.push((flag, File::open(&ns.Path).map_err(err(&ns.Path))?));
        } else if flag == CloneFlags::CLONE_NEWCGROUP {
            new_cgroup = true; // after the agent moved us into the cgroup
        } else {
            create |= flag;
        }
    }
    // The mount namespace last: it changes our root.
    joins.sort_by_key(|(flag, _)| *flag == CloneFlags::CLONE_NEWNS);
    for (flag, file) in &joins {
        setns(file, *flag).map_err(err(format!("setns {flag:?}")))?;
    }
    if cfg.mode == sync::MODE_CREATE {
        // The rootfs switch needs a mount namespace of its own, whatever the spec says.
        create |= CloneFlags::CLONE_NEWNS;
    }
    unshare(create).map_err(err("unshare"))?;
    let own_uts = create.contains(CloneFlags::CLONE_NEWUTS);
    if create.contains(CloneFlags::CLONE_NEWNS) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(err("making / rslave"))?;
    }
    if let Some(root) = root {
        fchdir(root).map_err(err("fchdir container root"))?;
        chroot(".").map_err(err("chroot container root"))?;
        chdir("/").map_err(err("chdir /"))?;
    }
    let (forked, born_in_cgroup) = fork_into(cgroup_dir.as_ref())?;
    drop(cgroup_dir);
    match forked {
        ForkResult::Child => {
            let e = match container_process(sock, &cfg, new_cgroup, own_uts) {
                Err(e) => e,
                Ok(never) => match never {},
            };
            let _ = write_frame(sock, sync::ERROR, e.to_string().as_bytes());
            std::process::exit(1)
        }
        ForkResult::Parent { child } => {
            let mut pid = (child.as_raw() as u32).to_le_bytes().to_vec();
            pid.push(u8::from(born_in_cgroup));
            write_frame(sock, sync::PID, &pid).map_err(err("sending pid"))?;
            // Drop our copies of the socket and the stdio pipes: the agent must see
            // EOF on them when the container process closes or execs.
            if let Ok(null) = open("/dev/null", OFlag::O_RDWR, Mode::empty()) {
                for fd in [0, 1, 2, SYNC_FD] {
                    let _ = dup2(null, fd);
                }
            }
            for sig in [
                Signal::SIGTERM,
                Signal::SIGINT,
                Signal::SIGHUP,
                Signal::SIGQUIT,
                Signal::SIGPIPE,
            ] {
                // SAFETY: SIG_IGN installs no handler code.
                let _ = unsafe { signal(sig, SigHandler::SigIgn) };
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
                    Ok(_) | Err(nix::Error::EINTR) => continue,
                    Err(e) => return Err(err("waitpid")(e)),
                }
            }
        }
    }
}

/// The container process: waits for the agent, sets itself up, waits for
/// start, then execs the user's program.
// Over 80 lines on purpose: runs in the forked process in the order the kernel demands (session,
// signals, rlimits, capabilities, seccomp, ids, exec); one piece keeps that order readable.
fn container_process(
    sock: &mut UnixStream,
    cfg: &Config,
    new_cgroup: bool,
    own_uts: bool,
) -> Res<Infallible> {
    expect(sock, sync::GO)?;
    if new_cgroup {
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(err("unshare cgroup"))?;
    }
    let spec = &cfg.spec;
    if cfg.mode == sync::MODE_CREATE {
        let mut warn = |msg: String| {
            let _ = write_frame(&mut *sock, sync::WARN, msg.as_bytes());
        };
        rootfs::setup(spec, &mut warn)?;
        if !spec.Hostname.is_empty() {
            if own_uts {
                sethostname(&spec.Hostname).map_err(err("sethostname"))?;
            } else {
                warn("hostname ignored: the container has no uts namespace of its own".into());
            }
        }
    }
    let process = spec
        .Process
        .as_ref()
        .ok_or_else(|| StepError::Spec("spec has no process".into()))?;
    if process.Terminal {
        open_pty(sock)?;
    }
    let args = cstrings(&process.Args)?;
    let mut env_vars = process.Env.clone();
    if !env_vars.iter().any(|e| e.starts_with("HOME=")) {
        // As runc: HOME from the container's /etc/passwd, else "/".
        let uid = process.User.as_ref().map(|u| u.UID).unwrap_or(0);
        env_vars.push(format!("HOME={}", home_of(uid)));
    }
    let env = cstrings(&env_vars)?;
    // Compiled before start so a bad profile fails here; the agent already
    // validated it at CreateContainer (and warned about unknown syscalls).
    let filter = match spec.Linux.as_ref().and_then(|l| l.Seccomp.as_ref()) {
        Some(s) => Some(seccomp::compile(s, &mut |_| {})?),
        None => None,
    };
    let path_var = process
        .Env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    write_frame(sock, sync::READY, b"").map_err(err("sending ready"))?;
    expect(sock, sync::START)?;

    if process.Terminal {
        // A new session whose controlling terminal is the pty on stdin.
        nix::unistd::setsid().map_err(err("setsid"))?;
        // SAFETY: TIOCSCTTY takes an integer argument.
        if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
            return Err(last_os("TIOCSCTTY"));
        }
    }
    // Rust's runtime ignores SIGPIPE, and ignored signals survive exec: give
    // the program default dispositions and an empty mask.
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: SIG_DFL installs no handler code.
            let _ = unsafe { signal(sig, SigHandler::SigDfl) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
    if process.NoNewPrivileges {
        // SAFETY: plain prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    }
    // Always written: the agent (and so the helper) runs at -1000.
    if let Ok(mut f) = File::create("/proc/self/oom_score_adj") {
        let _ = write!(f, "{}", process.OOMScoreAdj);
    }
    let mut warn = |msg: String| {
        let _ = write_frame(&mut *sock, sync::WARN, msg.as_bytes());
    };
    caps::set_rlimits(&process.Rlimits)?;
    let capabilities = process.Capabilities.as_ref();
    caps::prepare(capabilities, &mut warn)?;
    if let (Some(f), false) = (&filter, process.NoNewPrivileges) {
        // Without no_new_privs installing a filter needs CAP_SYS_ADMIN: before
        // the user and capabilities change (as runc does).
        seccomp::install(f)?;
    }
    let user = process.User.as_ref();
    let (uid, gid) = user.map(|u| (u.UID, u.GID)).unwrap_or((0, 0));
    let groups: Vec<Gid> = user
        .map(|u| u.AdditionalGids.iter().map(|g| Gid::from_raw(*g)).collect())
        .unwrap_or_default();
    setgroups(&groups).map_err(err("setgroups"))?;
    setgid(Gid::from_raw(gid)).map_err(err("setgid"))?;
    setuid(Uid::from_raw(uid)).map_err(err("setuid"))?;
    caps::apply(capabilities, &mut warn)?;
    let cwd = if process.Cwd.is_empty() {
        "/"
    } else {
        process.Cwd.as_str()
    };
    chdir(cwd).map_err(err(format!("chdir {cwd}")))?;
    umask(Mode::from_bits_truncate(0o022));
    let prog = process
        .Args
        .first()
        .ok_or_else(|| StepError::Spec("process has no args".into()))?;
    let path = lookup(prog, path_var).ok_or_else(|| StepError::NotInPath(prog.clone()))?;
    let path = CString::new(path).map_err(err("exec path"))?;
    if let (Some(f), true) = (&filter, process.NoNewPrivileges) {
        // With no_new_privs: as late as possible, so the filter constrains
        // only the program (which must be allowed execve).
        seccomp::install(f)?;
    }
    let e = match execve(&path, &args, &env) {
        Err(e) => e,
        Ok(never) => match never {},
    };
    Err(err(format!("exec {prog}"))(e))
}

/// Opens a pty in the container's own devpts (so tty names resolve inside
/// it), makes its peer our stdio and tells the agent the master's fd number;
/// the master stays open (close-on-exec) until the agent copied it.
fn open_pty(sock: &mut UnixStream) -> Res<()> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let master =
        open("/dev/ptmx", flags, Mode::empty()).map_err(err("/dev/ptmx in the container"))?;
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int; TIOCGPTPEER takes open flags and
    // returns a new descriptor for the peer.
    let slave = unsafe {
        if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) < 0 {
            return Err(last_os("unlocking pty"));
        }
        libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY)
    };
    if slave < 0 {
        return Err(last_os("opening pty peer"));
    }
    for fd in 0..3 {
        dup2(slave, fd).map_err(err("dup2 pty"))?;
    }
    let _ = nix::unistd::close(slave);
    write_frame(sock, sync::TTY, &(master as u32).to_le_bytes()).map_err(err("sending pty"))
}

/// The home directory of `uid` in the (container's) /etc/passwd, else "/".
fn home_of(uid: u32) -> String {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 6 && f[2].parse() == Ok(uid))
        .map(|f| f[5].to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string())
}

fn cstrings(v: &[String]) -> Res<Vec<CString>> {
    v.iter()
        .map(|s| CString::new(s.as_bytes()).map_err(err("NUL in string")))
        .collect()
}

/// Finds a program like execvp(3), with the container's PATH.
fn lookup(prog: &str, path_var: &str) -> Option<String> {
    if prog.contains('/') {
        return Some(prog.to_string());
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d}/{prog}"))
        .find(|p| {
            let c = match CString::new(p.as_str()) {
                Ok(c) => c,
                Err(_) => return false,
            };
            // SAFETY: access(2) with a valid NUL-terminated path.
            unsafe { libc::access(c.as_ptr(), libc::X_OK) == 0 }
        })
}
