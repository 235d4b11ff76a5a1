//! A container process as the agent sees it: the helper that runs it (see
//! `runtime`), its exit status, and its standard streams.
//!
//! Streams are pipes read only when the shim asks (`ReadStdout`/`ReadStderr`
//! with a length): back-pressure reaches the process. At end of stream, after
//! every byte was returned, a read answers the `EOF` error, as upstream does.
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use protocols::oci::Spec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::reaper::{wait_exit, ExitStatus, Reaper};
use crate::runtime::{encode_config, HELPER_ARG, SYNC_FD};
use crate::sync::{self, read_frame, write_frame};

/// Longest a helper may take to set a container up before we give up on it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest single read answered, whatever `len` the caller asked for.
const MAX_READ: usize = 1 << 20;

pub struct Process {
    pub exec_id: String,
    /// The container process itself (signals go here).
    pub pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    stdout: tokio::sync::Mutex<Option<pipe::Receiver>>,
    stderr: tokio::sync::Mutex<Option<pipe::Receiver>>,
    /// The sync socket until the process was started.
    start: Mutex<Option<UnixStream>>,
    /// The pty master when the process has a terminal (for resizes).
    tty: Option<OwnedFd>,
}

/// What to run: a container's init (`MODE_CREATE`) or an exec (`MODE_EXEC`,
/// joining the namespaces of `init_pid`).
pub struct SpawnRequest {
    pub mode: u8,
    pub init_pid: u32,
    pub spec: Spec,
    pub cgroup: Option<Cgroup>,
    pub log_id: String,
}

struct Spawned {
    pid: i32,
    exit: watch::Receiver<Option<ExitStatus>>,
    stdin: OwnedFd,
    stdout: OwnedFd,
    /// None with a terminal: everything comes on stdout.
    stderr: Option<OwnedFd>,
    tty: Option<OwnedFd>,
    sock: UnixStream,
}

impl Process {
    /// Spawns the helper and waits until the process is set up and waits for `start`.
    pub async fn spawn(exec_id: String, req: SpawnRequest, reaper: &Reaper) -> Result<Process> {
        let reaper = reaper.clone();
        let s = tokio::task::spawn_blocking(move || spawn_sync(req, &reaper))
            .await
            .map_err(|e| Error::Internal(format!("spawn task: {e}")))??;
        let io = |what: &str| {
            let what = what.to_string();
            move |e| Error::io(what, e)
        };
        let tty = s.tty.is_some();
        let stderr = match s.stderr {
            Some(fd) => Some(reader(fd, tty).map_err(io("stderr"))?),
            None => None,
        };
        Ok(Process {
            exec_id,
            pid: s.pid,
            exit: s.exit,
            stdin: tokio::sync::Mutex::new(Some(writer(s.stdin, tty).map_err(io("stdin"))?)),
            stdout: tokio::sync::Mutex::new(Some(reader(s.stdout, tty).map_err(io("stdout"))?)),
            stderr: tokio::sync::Mutex::new(stderr),
            start: Mutex::new(Some(s.sock)),
            tty: s.tty,
        })
    }

    /// Lets the process exec its program; fails if that exec failed.
    pub async fn start(&self) -> Result<()> {
        let sock = self
            .start
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut sock) = sock else {
            return Err(Error::FailedPrecondition(format!(
                "process {} already started",
                self.exec_id
            )));
        };
        let pid = self.pid;
        tokio::task::spawn_blocking(move || -> Result<()> {
            write_frame(&mut sock, sync::START, b"").map_err(|e| Error::io("sending start", e))?;
            loop {
                match read_frame(&mut sock).map_err(|e| Error::io("waiting for exec", e))? {
                    None => return Ok(()),
                    Some((sync::WARN, m)) => tracing::warn!(pid, "{}", String::from_utf8_lossy(&m)),
                    Some((sync::ERROR, m)) => {
                        return Err(Error::Internal(String::from_utf8_lossy(&m).into_owned()))
                    }
                    Some((t, _)) => {
                        return Err(Error::Internal(format!("unexpected frame {:?}", t as char)))
                    }
                }
            }
        })
        .await
        .map_err(|e| Error::Internal(format!("start task: {e}")))?
    }

    pub fn started(&self) -> bool {
        self.start
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none()
    }

    pub fn exited(&self) -> Option<ExitStatus> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> ExitStatus {
        wait_exit(self.exit.clone()).await
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        if self.exited().is_some() {
            return Ok(());
        }
        match kill(Pid::from_raw(self.pid), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(Error::sys(format!("kill {} {sig}", self.pid), e)),
        }
    }

    pub async fn read_stdout(&self, len: u32) -> Result<Vec<u8>> {
        read_stream(&self.stdout, len).await
    }

    pub async fn read_stderr(&self, len: u32) -> Result<Vec<u8>> {
        read_stream(&self.stderr, len).await
    }

    pub async fn write_stdin(&self, data: &[u8]) -> Result<u32> {
        let mut guard = self.stdin.lock().await;
        let w = guard
            .as_mut()
            .ok_or_else(|| Error::FailedPrecondition("stdin is closed".into()))?;
        w.write_all(data)
            .await
            .map_err(|e| Error::io("writing stdin", e))?;
        Ok(data.len() as u32)
    }

    /// Sets the terminal's window size (no-op without a terminal).
    pub fn resize(&self, rows: u32, cols: u32) -> Result<()> {
        let Some(tty) = &self.tty else {
            return Ok(());
        };
        set_winsize(tty, rows, cols).map_err(|e| Error::io("TIOCSWINSZ", e))
    }

    pub async fn close_stdin(&self) {
        self.stdin.lock().await.take();
    }
}

async fn read_stream(
    stream: &tokio::sync::Mutex<Option<pipe::Receiver>>,
    len: u32,
) -> Result<Vec<u8>> {
    let mut guard = stream.lock().await;
    let r = guard.as_mut().ok_or(Error::Eof)?;
    let mut buf = vec![0u8; (len as usize).clamp(1, MAX_READ)];
    let n = r
        .read(&mut buf)
        .await
        .map_err(|e| Error::io("reading stream", e))?;
    if n == 0 {
        guard.take();
        return Err(Error::Eof);
    }
    buf.truncate(n);
    Ok(buf)
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// An async reader on a pipe, or on a pty master (not a FIFO: unchecked).
fn reader(fd: OwnedFd, tty: bool) -> io::Result<pipe::Receiver> {
    if tty {
        set_nonblocking(&fd)?;
        return pipe::Receiver::from_owned_fd_unchecked(fd);
    }
    pipe::Receiver::from_owned_fd(fd)
}

fn writer(fd: OwnedFd, tty: bool) -> io::Result<pipe::Sender> {
    if tty {
        set_nonblocking(&fd)?;
        return pipe::Sender::from_owned_fd_unchecked(fd);
    }
    pipe::Sender::from_owned_fd(fd)
}

fn set_winsize(fd: &OwnedFd, rows: u32, cols: u32) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows.min(u16::MAX.into()) as u16,
        ws_col: cols.min(u16::MAX.into()) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct that outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The process's stdio: child ends (stdin, stdout, stderr) and ours.
struct Stdio3 {
    child: [OwnedFd; 3],
    stdin: OwnedFd,
    stdout: OwnedFd,
    stderr: Option<OwnedFd>,
    tty: Option<OwnedFd>,
}

fn make_stdio(spec: &Spec) -> Result<Stdio3> {
    let process = spec.Process.as_ref();
    if process.is_some_and(|p| p.Terminal) {
        let pty = nix::pty::openpty(None, None).map_err(|e| Error::sys("openpty", e))?;
        let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| Error::io("dup", e));
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd.as_raw_fd(),
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .map_err(|e| Error::sys("cloexec", e))?;
        }
        if let Some(size) = process.and_then(|p| p.ConsoleSize.as_ref()) {
            if size.Height > 0 && size.Width > 0 {
                let _ = set_winsize(&pty.master, size.Height, size.Width);
            }
        }
        return Ok(Stdio3 {
            child: [dup(&pty.slave)?, dup(&pty.slave)?, pty.slave],
            stdin: dup(&pty.master)?,
            stdout: dup(&pty.master)?,
            stderr: None,
            tty: Some(pty.master),
        });
    }
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    Ok(Stdio3 {
        child: [stdin_r, stdout_w, stderr_w],
        stdin: stdin_w,
        stdout: stdout_r,
        stderr: Some(stderr_r),
        tty: None,
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))
}

fn spawn_sync(req: SpawnRequest, reaper: &Reaper) -> Result<Spawned> {
    let stdio = make_stdio(&req.spec)?;
    let [child_in, child_out, child_err] = stdio.child;
    let (mut sock, theirs) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg(HELPER_ARG)
        .env_clear()
        .stdin(Stdio::from(child_in))
        .stdout(Stdio::from(child_out))
        .stderr(Stdio::from(child_err));
    // SAFETY: the closure runs between fork and exec and only calls dup2 and
    // fcntl, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            let r = if theirs_fd == SYNC_FD {
                libc::fcntl(SYNC_FD, libc::F_SETFD, 0)
            } else {
                libc::dup2(theirs_fd, SYNC_FD)
            };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let child = cmd
        .spawn()
        .map_err(|e| Error::io("spawning container helper", e))?;
    // The reaper owns waiting; `child` is dropped without a wait.
    let helper_pid = child.id() as i32;
    let exit = reaper.watch(helper_pid);
    drop(child);
    drop(cmd);
    drop(theirs);
    let log_id = req.log_id.clone();
    let mut pid = None;
    let r = handshake(&mut sock, req, &mut pid);
    if let Err(e) = r {
        if let Some(pid) = pid {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        tracing::warn!(id = %log_id, helper_pid, error = %e, "container process setup failed");
        return Err(e);
    }
    let pid = pid.ok_or_else(|| Error::Internal("no pid from helper".into()))?;
    tracing::info!(id = %log_id, pid, helper_pid, "container process ready");
    Ok(Spawned {
        pid,
        exit,
        stdin: stdio.stdin,
        stdout: stdio.stdout,
        stderr: stdio.stderr,
        tty: stdio.tty,
        sock,
    })
}

fn handshake(sock: &mut UnixStream, req: SpawnRequest, pid: &mut Option<i32>) -> Result<()> {
    let ioerr = |what: &'static str| move |e| Error::io(what, e);
    sock.set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(ioerr("socket timeout"))?;
    write_frame(
        sock,
        sync::CONFIG,
        &encode_config(req.mode, req.init_pid, &req.spec),
    )
    .map_err(ioerr("sending config"))?;
    let mut want = sync::PID;
    loop {
        match read_frame(sock).map_err(ioerr("container helper"))? {
            None => {
                return Err(Error::Internal(
                    "container helper exited during setup".into(),
                ))
            }
            Some((sync::WARN, m)) => {
                tracing::warn!(id = %req.log_id, "{}", String::from_utf8_lossy(&m))
            }
            Some((sync::ERROR, m)) => {
                return Err(Error::Internal(String::from_utf8_lossy(&m).into_owned()))
            }
            Some((sync::PID, p)) if want == sync::PID && p.len() == 4 => {
                let p = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as i32;
                *pid = Some(p);
                if let Some(cg) = &req.cgroup {
                    cg.add(p)?;
                }
                write_frame(sock, sync::GO, b"").map_err(ioerr("sending go"))?;
                want = sync::READY;
            }
            Some((sync::READY, _)) if want == sync::READY => break,
            Some((t, _)) => {
                return Err(Error::Internal(format!("unexpected frame {:?}", t as char)))
            }
        }
    }
    sock.set_read_timeout(None)
        .map_err(ioerr("socket timeout"))?;
    Ok(())
}
