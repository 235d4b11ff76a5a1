//! Agent logs over vsock (`agent.log_vport=<port>` on the kernel command
//! line, upstream's parameter; 1025 by convention): the agent listens on that
//! port and streams its log lines to whoever connects (the shim), one client
//! at a time. Lines still go to the console too.
//!
//! Logging never blocks on the host: lines go to a bounded backlog (oldest
//! dropped first when nobody reads) and a thread writes them to the client.
use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::socket::{
    accept4, bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

/// Most bytes kept while nobody reads (allocated once: the agent's RSS must
/// not creep while the log has no reader).
const BACKLOG_BYTES: usize = 64 << 10;
/// How long the listener retries bind (the vsock transport loads after logging starts).
const BIND_ATTEMPTS: u32 = 1000;

struct Shared {
    buf: Mutex<VecDeque<u8>>,
    ready: Condvar,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            buf: Mutex::new(VecDeque::with_capacity(BACKLOG_BYTES)),
            ready: Condvar::new(),
        }
    }
}

/// The vsock side of the log; cheap to clone.
#[derive(Clone, Default)]
pub struct VsockLog {
    shared: Arc<Shared>,
}

impl VsockLog {
    /// Starts listening on `port` (in a thread, retrying until vsock is up).
    pub fn start(port: u32) -> VsockLog {
        let log = VsockLog::default();
        let shared = log.shared.clone();
        let spawned = std::thread::Builder::new()
            .name("log-vport".into())
            .spawn(move || serve(port, &shared));
        if let Err(e) = spawned {
            eprintln!("kata-agent: log vport thread: {e}");
        }
        log
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self
            .shared
            .buf
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Drop the oldest first, so the buffer never grows past its capacity.
        let bytes = &bytes[bytes.len().saturating_sub(BACKLOG_BYTES)..];
        let len = buf.len();
        let excess = (len + bytes.len()).saturating_sub(BACKLOG_BYTES);
        buf.drain(..excess.min(len));
        buf.extend(bytes);
        self.shared.ready.notify_one();
    }

    /// Takes what is buffered, waiting for something to arrive.
    fn take(shared: &Shared) -> Vec<u8> {
        let buf = shared.buf.lock().unwrap_or_else(PoisonError::into_inner);
        let mut buf = shared
            .ready
            .wait_while(buf, |b| b.is_empty())
            .unwrap_or_else(PoisonError::into_inner);
        buf.drain(..).collect()
    }
}

fn listener(port: u32) -> nix::Result<std::os::fd::OwnedFd> {
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

fn serve(port: u32, shared: &Shared) {
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
            Ok(raw) => unsafe { std::fs::File::from_raw_fd(raw) },
            Err(nix::Error::EINTR) => continue,
            Err(e) => {
                eprintln!("kata-agent: log vport accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let mut conn = conn;
        loop {
            let chunk = VsockLog::take(shared);
            if conn.write_all(&chunk).is_err() {
                // The reader went away: wait for the next one.
                break;
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
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("agent.log_vport="))
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
        let cap = log.shared.buf.lock().expect("lock").capacity();
        log.push(&vec![b'b'; 3 * BACKLOG_BYTES]);
        assert_eq!(log.shared.buf.lock().expect("lock").capacity(), cap);
    }
}
