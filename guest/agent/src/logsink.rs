//! Agent logs over vsock (`agent.log_vport=<port>` on the kernel command
//! line, upstream's parameter; 1025 by convention): the agent listens on that
//! port and streams its log lines to whoever connects (the shim), one client
//! at a time: a new connection replaces the previous one, and lines a
//! vanished reader did not take go to the next. Lines still go to the console
//! too.
//!
//! Logging never blocks on the host: lines go to a bounded backlog (oldest
//! dropped first when nobody reads) and a thread writes them to the client.
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::socket::{
    accept4, bind, listen, shutdown, socket, AddressFamily, Backlog, Shutdown, SockFlag, SockType,
    VsockAddr,
};

/// Most bytes kept while nobody reads (allocated once: the agent's RSS must
/// not creep while the log has no reader).
const BACKLOG_BYTES: usize = 64 << 10;
/// How long the listener retries bind (the vsock transport loads after logging starts).
const BIND_ATTEMPTS: u32 = 1000;

struct State {
    buf: VecDeque<u8>,
    /// The current reader; a new connection replaces (and shuts down) it.
    conn: Option<Arc<File>>,
}

struct Shared {
    state: Mutex<State>,
    ready: Condvar,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            state: Mutex::new(State {
                buf: VecDeque::with_capacity(BACKLOG_BYTES),
                conn: None,
            }),
            ready: Condvar::new(),
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The vsock side of the log; cheap to clone.
#[derive(Clone, Default)]
pub struct VsockLog {
    shared: Arc<Shared>,
}

impl VsockLog {
    /// Starts listening on `port` (in a thread, retrying until vsock is up)
    /// and writing to the reader (in another).
    pub fn start(port: u32) -> VsockLog {
        let log = VsockLog::default();
        for (name, role) in [
            ("log-vport", accept_loop as fn(u32, &Shared)),
            ("log-writer", write_loop),
        ] {
            let shared = log.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || role(port, &shared));
            if let Err(e) = spawned {
                eprintln!("kata-agent: {name} thread: {e}");
            }
        }
        log
    }

    fn push(&self, bytes: &[u8]) {
        let mut st = self.shared.lock();
        keep_newest(&mut st.buf, bytes, false);
        self.shared.ready.notify_one();
    }

    /// Takes what is buffered (waiting for something to arrive), for a test.
    #[cfg(test)]
    fn take(shared: &Shared) -> Vec<u8> {
        let st = shared.lock();
        let mut st = shared
            .ready
            .wait_while(st, |s| s.buf.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        st.buf.drain(..).collect()
    }
}

/// Adds `bytes` at the back (new lines) or the front (unsent ones going
/// back), dropping the oldest so the buffer never grows past its capacity.
fn keep_newest(buf: &mut VecDeque<u8>, bytes: &[u8], front: bool) {
    let bytes = &bytes[bytes.len().saturating_sub(BACKLOG_BYTES)..];
    if front {
        let room = BACKLOG_BYTES.saturating_sub(buf.len());
        // The front is the oldest: keep only what fits.
        for b in bytes[bytes.len().saturating_sub(room)..].iter().rev() {
            buf.push_front(*b);
        }
        return;
    }
    let len = buf.len();
    let excess = (len + bytes.len()).saturating_sub(BACKLOG_BYTES);
    buf.drain(..excess.min(len));
    buf.extend(bytes);
}

pub(crate) fn listener(port: u32) -> nix::Result<std::os::fd::OwnedFd> {
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
    listen(&fd, Backlog::new(1).unwrap_or(Backlog::MAXCONN))?;
    Ok(fd)
}

/// Accepts readers; the newest wins. The previous one is shut down, which
/// also wakes the writer if it is blocked on a reader that vanished without
/// the guest noticing (its lines then go to the new reader).
fn accept_loop(port: u32, shared: &Shared) {
    let mut attempt = 0;
    let fd = loop {
        match listener(port) {
            Ok(fd) => break fd,
            Err(e) if attempt >= BIND_ATTEMPTS => {
                eprintln!("kata-agent: log vport {port}: {e}");
                return;
            }
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    loop {
        let conn = match accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
            Ok(raw) => Arc::new(unsafe { File::from_raw_fd(raw) }),
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                eprintln!("kata-agent: log vport accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let old = shared.lock().conn.replace(conn);
        if let Some(old) = old {
            let _ = shutdown(old.as_raw_fd(), Shutdown::Both);
        }
        shared.ready.notify_one();
    }
}

/// True once the reader closed its end (as far as the guest knows).
fn hung_up(conn: &File) -> bool {
    let mut pfd = libc::pollfd {
        fd: conn.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Writes the backlog to the current reader. Bytes it could not take go back
/// to the front of the backlog, for the next reader.
fn write_loop(_port: u32, shared: &Shared) {
    loop {
        let (conn, chunk) = {
            let st = shared.lock();
            let mut st = shared
                .ready
                .wait_while(st, |s| s.buf.is_empty() || s.conn.is_none())
                .unwrap_or_else(PoisonError::into_inner);
            let Some(conn) = st.conn.clone() else {
                continue;
            };
            let chunk: Vec<u8> = st.buf.drain(..).collect();
            (conn, chunk)
        };
        let mut sent = 0;
        let failed = hung_up(&conn)
            || loop {
                if sent == chunk.len() {
                    break false;
                }
                match (&*conn).write(&chunk[sent..]) {
                    Ok(0) | Err(_) => break true,
                    Ok(n) => sent += n,
                }
            };
        if failed {
            let mut st = shared.lock();
            keep_newest(&mut st.buf, &chunk[sent..], true);
            if st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, &conn)) {
                st.conn = None;
            }
        }
    }
}

/// The log writer: the console (stderr), plus the vsock log when configured.
#[derive(Clone, Default)]
pub struct Tee {
    pub vsock: Option<VsockLog>,
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = Tee;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        if let Some(v) = &self.vsock {
            v.push(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `agent.log_vport=<port>` from a kernel command line.
pub fn vport_of(cmdline: &str) -> Option<u32> {
    crate::init::cmdline_param(cmdline, "agent.log_vport")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vport_from_cmdline() {
        assert_eq!(
            vport_of("console=ttyS0 agent.log_vport=1025 quiet"),
            Some(1025)
        );
        assert_eq!(vport_of("agent.log_vport=0"), None);
        assert_eq!(vport_of("agent.log_vport=x"), None);
        assert_eq!(vport_of("agent.log=debug"), None);
    }

    #[test]
    fn backlog_is_bounded_and_keeps_the_newest() {
        let log = VsockLog::default();
        log.push(&vec![b'a'; BACKLOG_BYTES]);
        log.push(b"tail");
        let got = VsockLog::take(&log.shared);
        assert_eq!(got.len(), BACKLOG_BYTES);
        assert!(got.ends_with(b"aatail"));
        let cap = log.shared.lock().buf.capacity();
        log.push(&vec![b'b'; 3 * BACKLOG_BYTES]);
        assert_eq!(log.shared.lock().buf.capacity(), cap);
    }

    #[test]
    fn unsent_bytes_go_back_in_front_of_newer_ones() {
        let mut buf = VecDeque::new();
        keep_newest(&mut buf, b"new", false);
        keep_newest(&mut buf, b"old ", true);
        assert_eq!(buf.iter().copied().collect::<Vec<_>>(), b"old new");
        // A full backlog keeps the newer lines over the unsent ones.
        let mut buf: VecDeque<u8> = vec![b'n'; BACKLOG_BYTES - 2].into();
        keep_newest(&mut buf, b"abcd", true);
        assert_eq!(buf.len(), BACKLOG_BYTES);
        assert_eq!(buf.iter().take(3).copied().collect::<Vec<_>>(), b"cdn");
    }
}
