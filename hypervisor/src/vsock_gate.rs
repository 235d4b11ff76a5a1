//! A gate in front of vhost-device-vsock's hybrid-vsock socket that holds
//! every host-side byte, connect and close while the VM is paused.
//!
//! Why: QMP `stop` makes QEMU stop its vhost-user devices (`GET_VRING_BASE`
//! marks each vring not ready). vhost-device-vsock 0.3.0 (the newest release)
//! still reacts to host activity on its unix socket meanwhile: a `CONNECT`, a
//! write or a close wakes its vring worker, which then fails to iterate the
//! not-ready TX queue (`IterateQueue`), returns the error out of
//! vhost-user-backend's epoll loop, and that thread ends for good. After
//! `cont` QEMU re-sends the vring setup, but nothing serves the queues any
//! more: neither open nor new connections are answered again. Seen on this
//! host: the `vring_worker` thread is gone right after a `CONNECT` while
//! paused; without host traffic during the pause, stop/cont is harmless.
//!
//! So the VM's public hybrid-vsock socket is ours: each accepted connection
//! is relayed to the helper's socket, and [`Gate::close`] (before `stop`)
//! waits for the syscalls in flight and then lets none reach the helper —
//! no connect, write, read (a read can wake a helper waiting to write) or
//! close — until [`Gate::open`] (after `cont`). Clients see a paused agent as
//! a silent one; what they sent is delivered after `cont`. Every syscall on
//! the helper's side is non-blocking under the gate, so `close` never waits
//! on a slow guest.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, RwLock, RwLockReadGuard};
use tokio::task::JoinSet;

use crate::{Error, Result};

/// Relay buffer bounds; one buffer per direction and connection. Stdout
/// chunks arrive as up to 1 MiB ttrpc answers: 256 KiB moves one in four
/// reads and writes (64 KiB took sixteen). A buffer starts small and grows
/// once a read fills it, so idle connections (the agent's control channel
/// of every pod) keep little memory.
const BUF_MIN: usize = 16 * 1024;
const BUF: usize = 256 * 1024;

/// After a read of `n` bytes into `buf`: a full buffer means more is
/// waiting, so the next read gets the largest size.
fn grow_if_filled(buf: &mut Vec<u8>, n: usize) {
    if n == buf.len() && buf.len() < BUF {
        *buf = vec![0u8; BUF];
    }
}

#[derive(Debug)]
struct State {
    /// Held shared around each syscall on the helper's side, exclusively to close.
    lock: RwLock<()>,
    open: watch::Sender<bool>,
}

impl State {
    /// Waits until the gate is open; the guard keeps it open.
    async fn pass(&self) -> RwLockReadGuard<'_, ()> {
        let mut rx = self.open.subscribe();
        loop {
            // The sender lives in `self`: wait_for cannot fail while we borrow it.
            let _ = rx.wait_for(|open| *open).await;
            let guard = self.lock.read().await;
            if *self.open.borrow() {
                return guard;
            }
        }
    }
}

/// The relay: listens on the public socket until dropped.
#[derive(Debug)]
pub struct Gate {
    state: Arc<State>,
    accept: tokio::task::JoinHandle<()>,
}

impl Gate {
    /// Listens on `public` (removed first if stale) and relays to `backend`.
    pub fn listen(public: &Path, backend: PathBuf, sandbox: String) -> Result<Gate> {
        let _ = std::fs::remove_file(public);
        let listener = UnixListener::bind(public).map_err(|e| Error::Io {
            what: format!("listening on {}", public.display()),
            source: e,
        })?;
        // The agent's door: root's alone, whatever the umask.
        std::fs::set_permissions(
            public,
            <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
        )
        .map_err(|e| Error::Io {
            what: format!("chmod {}", public.display()),
            source: e,
        })?;
        let state = Arc::new(State {
            lock: RwLock::new(()),
            open: watch::Sender::new(true),
        });
        let accept = tokio::spawn(accept_loop(listener, backend, state.clone(), sandbox));
        Ok(Gate { state, accept })
    }

    /// Stops all traffic to the helper; returns once nothing is in flight.
    pub async fn close(&self) {
        let _exclusive = self.state.lock.write().await;
        self.state.open.send_replace(false);
    }

    /// Lets held traffic through again.
    pub fn open(&self) {
        self.state.open.send_replace(true);
    }

    pub fn is_open(&self) -> bool {
        *self.state.open.borrow()
    }

    /// Stops listening and ends every relay (the VM is going away).
    pub fn shutdown(&self) {
        self.accept.abort();
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every relay.
        self.accept.abort();
    }
}

async fn accept_loop(listener: UnixListener, backend: PathBuf, state: Arc<State>, sandbox: String) {
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => {
                    let (backend, state, sandbox) = (backend.clone(), state.clone(), sandbox.clone());
                    relays.spawn(async move {
                        if let Err(e) = relay(client, &backend, &state).await {
                            tracing::debug!(sandbox, "hybrid vsock relay ended: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(sandbox, "hybrid vsock gate: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap finished relays so the set does not grow.
            Some(_) = relays.join_next(), if !relays.is_empty() => {}
        }
    }
}

async fn relay(mut client: UnixStream, backend: &Path, state: &State) -> io::Result<()> {
    let upstream = {
        let _g = state.pass().await;
        // A unix connect to a listening socket does not block on the peer.
        UnixStream::connect(backend).await?
    };
    let (mut client_r, mut client_w) = client.split();
    let (up_r, mut up_w) = upstream.into_split();
    let to_backend = async {
        let mut buf = vec![0u8; BUF_MIN];
        loop {
            // A client that reset is a client that left: half-close as for EOF.
            let n = tokio::io::AsyncReadExt::read(&mut client_r, &mut buf)
                .await
                .unwrap_or(0);
            if n == 0 {
                let _g = state.pass().await;
                // Half-close: the helper sees EOF, the guest's side stays readable.
                // (shutdown(2) on a unix socket does not block.)
                return up_w.shutdown().await;
            }
            let mut off = 0;
            while off < n {
                up_w.writable().await?;
                let _g = state.pass().await;
                match up_w.try_write(&buf[off..n]) {
                    Ok(k) => off += k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
            }
            grow_if_filled(&mut buf, n);
        }
    };
    let from_backend = async {
        let mut buf = vec![0u8; BUF_MIN];
        loop {
            up_r.readable().await?;
            let n = {
                let _g = state.pass().await;
                match up_r.try_read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            };
            if n == 0 {
                return client_w.shutdown().await;
            }
            client_w.write_all(&buf[..n]).await?;
            grow_if_filled(&mut buf, n);
        }
    };
    // One direction's EOF is a half-close: the other goes on. An error (the
    // helper resets a connection it refused while the guest boots) ends both:
    // the client must see it, not wait on the other direction forever.
    let result = {
        let (mut to_backend, mut from_backend) = (Box::pin(to_backend), Box::pin(from_backend));
        tokio::select! {
            r = &mut from_backend => match r {
                Ok(()) => to_backend.await,
                Err(e) => Err(e),
            },
            r = &mut to_backend => match r {
                Ok(()) => from_backend.await,
                Err(e) => Err(e),
            },
        }
    };
    // Closing the helper's end is traffic too.
    let _g = state.pass().await;
    drop((up_r, up_w));
    result
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    use super::*;

    /// An echo server standing in for vhost-device-vsock; reports each
    /// connection and each chunk it receives.
    fn backend(path: &Path) -> mpsc::UnboundedReceiver<String> {
        let listener = UnixListener::bind(path).expect("bind backend");
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let tx = tx.clone();
                let _ = tx.send("connect".to_string());
                tokio::spawn(async move {
                    let mut buf = [0u8; 256];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 {
                            let _ = tx.send("eof".to_string());
                            return;
                        }
                        let _ = tx.send(String::from_utf8_lossy(&buf[..n]).into_owned());
                        if s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        rx
    }

    async fn quiet(rx: &mut mpsc::UnboundedReceiver<String>) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .ok()
            .flatten()
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("backend activity within 5 s")
            .expect("backend alive")
    }

    /// vhost-device-vsock refuses connections while the guest's device is not
    /// up: it accepts and closes, our CONNECT unread (a reset). The client
    /// must see the end at once and re-dial, not wait forever.
    #[tokio::test]
    async fn a_reset_by_the_helper_reaches_the_client() {
        let d = tempfile::tempdir().expect("tempdir");
        let (public, private) = (d.path().join("vsock.sock"), d.path().join("vdv.sock"));
        let listener = UnixListener::bind(&private).expect("bind");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::time::sleep(Duration::from_millis(20)).await;
                drop(s);
            }
        });
        let _gate = Gate::listen(&public, private, "sb".into()).expect("gate");
        let mut c = UnixStream::connect(&public).await.expect("connect");
        c.write_all(b"CONNECT 1024\n").await.expect("write");
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf))
            .await
            .expect("the client sees the helper's close");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }

    /// Buffers start small and grow under load: a stream of several
    /// largest-buffer sizes crosses both ways intact and in order.
    #[tokio::test]
    async fn large_streams_cross_both_ways_intact() {
        let d = tempfile::tempdir().expect("tempdir");
        let (public, private) = (d.path().join("vsock.sock"), d.path().join("vdv.sock"));
        let listener = UnixListener::bind(&private).expect("bind");
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let gate = Gate::listen(&public, private, "sb".into()).expect("gate");
        gate.open();
        let data: Vec<u8> = (0..3 * BUF + 12_345).map(|i| (i % 251) as u8).collect();
        let c = UnixStream::connect(&public).await.expect("connect");
        let (mut r, mut w) = c.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.expect("write");
            w.shutdown().await.expect("half-close");
        });
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back))
            .await
            .expect("echo within 10 s")
            .expect("read");
        writer.await.expect("writer");
        assert_eq!(back.len(), data.len());
        assert!(back == data, "echoed bytes differ");
    }

    #[tokio::test]
    async fn closed_gate_holds_connects_writes_and_closes_until_opened() {
        let d = tempfile::tempdir().expect("tempdir");
        let (public, private) = (d.path().join("vsock.sock"), d.path().join("vdv.sock"));
        let mut seen = backend(&private);
        let gate = Gate::listen(&public, private, "sb".into()).expect("gate");

        // Open: bytes flow both ways.
        let mut old = UnixStream::connect(&public).await.expect("connect");
        old.write_all(b"CONNECT 1024\n").await.expect("write");
        assert_eq!(next(&mut seen).await, "connect");
        assert_eq!(next(&mut seen).await, "CONNECT 1024\n");
        let mut buf = [0u8; 64];
        let n = old.read(&mut buf).await.expect("echo");
        assert_eq!(&buf[..n], b"CONNECT 1024\n");

        // Closed: a write on the open connection, a new connection and a
        // close reach nothing.
        gate.close().await;
        assert!(!gate.is_open());
        old.write_all(b"ping").await.expect("write while closed");
        let mut fresh = UnixStream::connect(&public)
            .await
            .expect("accepted while closed");
        fresh.write_all(b"hello").await.expect("write");
        let gone = UnixStream::connect(&public).await.expect("connect");
        drop(gone);
        assert_eq!(quiet(&mut seen).await, None, "traffic passed a closed gate");

        // Opened: everything held is delivered, the echo comes back.
        gate.open();
        let mut got = Vec::new();
        for _ in 0..5 {
            got.push(next(&mut seen).await);
        }
        got.sort();
        // Held: "ping" on the old connection; "hello" on a new one; a connect +
        // EOF for the connection closed while the gate was shut.
        assert_eq!(
            got,
            ["connect", "connect", "eof", "hello", "ping"],
            "{got:?}"
        );
        let n = old.read(&mut buf).await.expect("echo after open");
        assert_eq!(&buf[..n], b"ping");
        let n = fresh.read(&mut buf).await.expect("echo after open");
        assert_eq!(&buf[..n], b"hello");

        // A client's half-close reaches the backend as EOF.
        fresh.shutdown().await.expect("shutdown");
        assert_eq!(next(&mut seen).await, "eof");

        // Shut down: relays end (the backend sees their EOFs), nothing new passes.
        gate.shutdown();
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(mut s) = UnixStream::connect(&public).await {
            let _ = s.write_all(b"x").await;
        }
        while let Some(e) = quiet(&mut seen).await {
            assert_eq!(e, "eof", "traffic after shutdown");
        }
    }
}
