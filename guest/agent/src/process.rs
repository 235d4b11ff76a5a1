//! A container process as the agent sees it: the helper that runs it (see
//! `runtime`), its exit status, and its standard streams.
//!
//! Streams are pipes read only when the shim asks (`ReadStdout`/`ReadStderr`
//! with a length): back-pressure reaches the process. At end of stream, after
//! every byte was returned, a read answers the `EOF` error, as upstream does.
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};
use protocols::oci::Spec;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;

use crate::cgroups::Cgroup;
use crate::error::{Error, Result};
use crate::reaper::{wait_exit, ExitStatus, Reaper};
use crate::runtime::{encode_config, HELPER_ARG, SYNC_FD};
use crate::spawn;
use crate::sync::{self, read_frame, write_frame};

/// Longest a helper may take to set a container up before we give up on it.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest single read answered, whatever `len` the caller asked for.
const MAX_READ: usize = 1 << 20;
/// Buffer of the stdout/stderr pipes (the default is 64 KiB). The writer
/// keeps filling it while a ReadStdout answer travels to the host, and the
/// next read takes all of it: a busy stream moves up to 1 MiB per round trip
/// instead of 64 KiB. Pages are allocated only while they hold data, and the
/// pipe still bounds what a process can write ahead of its reader.
const PIPE_SIZE: i32 = 1 << 20;

pub struct Process {
    pub exec_id: String,
    /// The container process itself (signals go here, through `pidfd`).
    pub pid: i32,
    pidfd: OwnedFd,
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
    pidfd: OwnedFd,
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
            pidfd: s.pidfd,
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
            let t0 = std::time::Instant::now();
            write_frame(&mut sock, sync::START, b"").map_err(|e| Error::io("sending start", e))?;
            loop {
                match read_frame(&mut sock).map_err(|e| Error::io("waiting for exec", e))? {
                    None => {
                        tracing::debug!(pid, elapsed = ?t0.elapsed(), "program exec'd");
                        return Ok(());
                    }
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
        pidfd_signal(&self.pidfd, sig)
            .map_err(|e| Error::io(format!("signal {sig} to {}", self.pid), e))
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

    /// Both output streams were read to their end (or are being read: no).
    pub fn drained(&self) -> bool {
        let done = |m: &tokio::sync::Mutex<Option<pipe::Receiver>>| {
            m.try_lock().is_ok_and(|g| g.is_none())
        };
        done(&self.stdout) && done(&self.stderr)
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
    let want = (len as usize).clamp(1, MAX_READ);
    let mut buf = Vec::new();
    let n = match read_available(r, want, &mut buf).await {
        Ok(n) => n,
        // A pty master reads EIO once every slave end is closed: the end of stream.
        Err(e) if e.raw_os_error() == Some(libc::EIO) => 0,
        Err(e) => {
            // The stream is unusable after an error: end it.
            guard.take();
            return Err(Error::io("reading stream", e));
        }
    };
    if n == 0 {
        guard.take();
        return Err(Error::Eof);
    }
    Ok(buf)
}

/// Reads what the pipe holds (at least one byte, at most `max`) into `buf`,
/// waiting only while it is empty: small interactive writes go out at once.
/// `buf` is sized to what FIONREAD reports, so an answer costs neither a
/// 1 MiB allocation nor zeroing it (both slow under TCG).
async fn read_available(r: &pipe::Receiver, max: usize, buf: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        r.readable().await?;
        let avail = bytes_available(r).unwrap_or(DEFAULT_READ);
        // 0 available yet readable: end of stream (or a racing reader):
        // room for one byte lets the read tell which.
        // The read fills the capacity: exactly what we want, never more than `max`.
        *buf = Vec::with_capacity(avail.clamp(1, max));
        match r.try_read_buf(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Read size when the descriptor cannot say how much it holds.
const DEFAULT_READ: usize = 64 * 1024;

/// Bytes waiting in a pipe or pty (FIONREAD).
fn bytes_available(fd: &impl AsRawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a pointer to a live local.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Grows a pipe's buffer; a pipe left at its default size still works.
fn grow_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl with an integer argument on a descriptor we own.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) } < 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "F_SETPIPE_SZ");
    }
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

/// The process's stdio: the child's ends (none with a terminal: the helper
/// opens the pty inside the container) and ours.
struct Pipes {
    child: Option<[OwnedFd; 3]>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

fn make_pipes(terminal: bool) -> Result<Pipes> {
    if terminal {
        return Ok(Pipes {
            child: None,
            stdin: None,
            stdout: None,
            stderr: None,
        });
    }
    let (stdin_r, stdin_w) = pipe()?;
    let (stdout_r, stdout_w) = pipe()?;
    let (stderr_r, stderr_w) = pipe()?;
    grow_pipe(&stdout_r);
    grow_pipe(&stderr_r);
    Ok(Pipes {
        child: Some([stdin_r, stdout_w, stderr_w]),
        stdin: Some(stdin_w),
        stdout: Some(stdout_r),
        stderr: Some(stderr_r),
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| Error::sys("pipe", e))
}

/// Sends `sig` through `pidfd`; a process already gone is not an error.
pub(crate) fn pidfd_signal(pidfd: &OwnedFd, sig: Signal) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a pidfd we own and no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig as i32,
            0usize,
            0,
        )
    };
    match r {
        0 => Ok(()),
        _ => match io::Error::last_os_error() {
            e if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            e => Err(e),
        },
    }
}

/// A pidfd for `pid` (Linux 5.3+): signals through it cannot hit a recycled pid.
pub(crate) fn pidfd_open(pid: i32) -> Result<OwnedFd> {
    // SAFETY: raw syscall with integer arguments; the new descriptor is owned
    // only by the OwnedFd wrapping it.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
        if fd < 0 {
            return Err(Error::io("pidfd_open", io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(fd as i32))
    }
}

/// Copies descriptor `fd` of the process behind `pidfd` into ours (pidfd_getfd(2), Linux 5.6+).
fn take_fd(pidfd: &OwnedFd, fd: u32) -> Result<OwnedFd> {
    // SAFETY: raw syscall with integer arguments; the new descriptor is owned
    // only by the OwnedFd wrapping it.
    unsafe {
        let got = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if got < 0 {
            return Err(Error::io("pidfd_getfd", io::Error::last_os_error()));
        }
        Ok(OwnedFd::from_raw_fd(got as i32))
    }
}

fn spawn_sync(req: SpawnRequest, reaper: &Reaper) -> Result<Spawned> {
    // Phase timings (debug level): where an exec's latency goes.
    let t0 = std::time::Instant::now();
    let process = req.spec.Process.as_ref();
    let terminal = process.is_some_and(|p| p.Terminal);
    let console = process
        .and_then(|p| p.ConsoleSize.as_ref())
        .map(|b| (b.Height, b.Width));
    let pipes = make_pipes(terminal)?;
    let (mut sock, theirs) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
    // The helper's sync descriptor is fixed; ours must not sit on it.
    let theirs = if theirs.as_raw_fd() == SYNC_FD {
        let moved = theirs.try_clone().map_err(|e| Error::io("dup", e))?;
        drop(theirs);
        moved
    } else {
        theirs
    };
    let stdio = match &pipes.child {
        Some([i, o, e]) => spawn::Stdio::Fds([i.as_raw_fd(), o.as_raw_fd(), e.as_raw_fd()]),
        None => spawn::Stdio::Null,
    };
    let (helper_pid, exit) = reaper
        .spawn(|| {
            spawn::spawn(
                "/proc/self/exe",
                HELPER_ARG,
                &stdio,
                theirs.as_raw_fd(),
                SYNC_FD,
            )
        })
        .map_err(|e| Error::io("spawning container helper", e))?;
    // The reaper owns waiting; our copies of the child's ends go.
    drop(pipes.child);
    drop(theirs);
    let log_id = req.log_id.clone();
    tracing::debug!(id = %log_id, elapsed = ?t0.elapsed(), "helper spawned");
    let mut child = None;
    let r = handshake(&mut sock, req, &mut child, t0);
    let tty = match r {
        Ok(tty) => tty,
        Err(e) => {
            if let Some((pid, _)) = child {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            tracing::warn!(id = %log_id, helper_pid, error = %e, "container process setup failed");
            return Err(e);
        }
    };
    let (pid, pidfd) = child.ok_or_else(|| Error::Internal("no pid from helper".into()))?;
    tracing::info!(id = %log_id, pid, helper_pid, elapsed = ?t0.elapsed(), "container process ready");
    let (stdin, stdout) = match (&tty, pipes.stdin, pipes.stdout) {
        (Some(master), _, _) => {
            if let Some((rows, cols)) = console.filter(|(h, w)| *h > 0 && *w > 0) {
                let _ = set_winsize(master, rows, cols);
            }
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| Error::io("dup", e));
            (dup(master)?, dup(master)?)
        }
        (None, Some(stdin), Some(stdout)) => (stdin, stdout),
        _ => {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(Error::Internal(
                "no terminal from the container helper".into(),
            ));
        }
    };
    Ok(Spawned {
        pid,
        pidfd,
        exit,
        stdin,
        stdout,
        stderr: pipes.stderr,
        tty,
        sock,
    })
}

/// Runs the helper's setup handshake; returns the pty master if it opened one.
fn handshake(
    sock: &mut UnixStream,
    req: SpawnRequest,
    child: &mut Option<(i32, OwnedFd)>,
    t0: std::time::Instant,
) -> Result<Option<OwnedFd>> {
    let ioerr = |what: &'static str| move |e| Error::io(what, e);
    sock.set_read_timeout(Some(SETUP_TIMEOUT))
        .map_err(ioerr("socket timeout"))?;
    let cgroup_dir = req
        .cgroup
        .as_ref()
        .map(|c| c.path().to_string_lossy().into_owned());
    let config = encode_config(
        req.mode,
        req.init_pid,
        cgroup_dir.as_deref().unwrap_or_default(),
        &req.spec,
    );
    write_frame(sock, sync::CONFIG, &config).map_err(ioerr("sending config"))?;
    let mut want = sync::PID;
    let mut tty = None;
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
            Some((sync::PID, p)) if want == sync::PID && p.len() == 5 => {
                let born_in_cgroup = p[4] == 1;
                let p = u32::from_le_bytes([p[0], p[1], p[2], p[3]]) as i32;
                *child = Some((p, pidfd_open(p)?));
                let t = std::time::Instant::now();
                match &req.cgroup {
                    // Moving a process waits for an RCU grace period (~15 ms
                    // under TCG): only when clone3 could not place it.
                    Some(cg) if !born_in_cgroup => cg.add(p)?,
                    _ => {}
                }
                tracing::debug!(id = %req.log_id, born_in_cgroup, elapsed = ?t.elapsed(), since_spawn = ?t0.elapsed(), "joined the cgroup");
                write_frame(sock, sync::GO, b"").map_err(ioerr("sending go"))?;
                want = sync::READY;
            }
            Some((sync::TTY, fd)) if want == sync::READY && fd.len() == 4 => {
                let fd = u32::from_le_bytes([fd[0], fd[1], fd[2], fd[3]]);
                let (_, pidfd) = child
                    .as_ref()
                    .ok_or_else(|| Error::Internal("tty before pid".into()))?;
                tty = Some(take_fd(pidfd, fd)?);
            }
            Some((sync::READY, _)) if want == sync::READY => break,
            Some((t, _)) => {
                return Err(Error::Internal(format!("unexpected frame {:?}", t as char)))
            }
        }
    }
    sock.set_read_timeout(None)
        .map_err(ioerr("socket timeout"))?;
    Ok(tty)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One read takes everything the (grown) pipe holds, beyond the default
    /// 64 KiB, and a later small write is answered as it comes.
    #[tokio::test]
    async fn a_read_takes_what_the_pipe_holds_and_waits_only_when_empty() {
        let (r, w) = pipe().expect("pipe");
        grow_pipe(&r);
        let r = pipe::Receiver::from_owned_fd(r).expect("receiver");
        let mut w = std::fs::File::from(w);
        let data: Vec<u8> = (0..200 * 1024).map(|i| (i % 251) as u8).collect();
        std::io::Write::write_all(&mut w, &data).expect("fill the pipe");
        let mut buf = Vec::new();
        let n = read_available(&r, MAX_READ, &mut buf).await.expect("read");
        assert_eq!((n, &buf), (data.len(), &data));

        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            std::io::Write::write_all(&mut w, b"hi").expect("write");
            w
        });
        let n = tokio::time::timeout(
            Duration::from_secs(5),
            read_available(&r, MAX_READ, &mut buf),
        )
        .await
        .expect("a small write is answered at once")
        .expect("read");
        assert_eq!(&buf[..n], b"hi");
        // The length asked for still caps a read.
        let mut w = writer.join().expect("writer");
        std::io::Write::write_all(&mut w, b"abcdef").expect("write");
        let n = read_available(&r, 4, &mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"abcd");
        drop(w);
        let n = read_available(&r, MAX_READ, &mut buf).await.expect("read");
        assert_eq!(&buf[..n], b"ef");
        let n = read_available(&r, MAX_READ, &mut buf).await.expect("eof");
        assert_eq!(n, 0);
    }
}
