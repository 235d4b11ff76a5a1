//! Port-forward, host side: makes containerd's CRI PortForward reach the VM.
//!
//! containerd (1.6 and 2.3 alike) enters the pod's network namespace on the
//! host and dials `localhost:PORT`, `tcp4` first, then `tcp6`. For a VM pod
//! nothing listens there: the pod's containers listen on the guest's
//! loopback. So, per pod with a network namespace, once the VM is up:
//!
//! - a TCP listener on an ephemeral port of `127.0.0.1` (and the same port of
//!   `::1` where the netns has IPv6) *inside the pod netns* (the sockets are
//!   made by a thread that entered it, so they belong to it);
//! - a NAT rule there (iptables/ip6tables, `nat` table, `OUTPUT`, `-o lo`)
//!   that redirects every TCP connection to the loopback, whatever its port,
//!   to that listener;
//! - per accepted connection, `SO_ORIGINAL_DST` names the port containerd
//!   asked for; the shim opens a vsock stream to the agent's port-forward
//!   port ([`protocols::PORT_FORWARD_VSOCK_PORT`]), sends `TCP <port>\n`,
//!   and on `OK` relays bytes both ways. A refusal (nothing listens in the
//!   guest) resets the connection, so containerd reports an error to the
//!   client instead of an empty stream.
//!
//! The guest is untrusted: its answer is read bounded (one line of at most
//! [`MAX_ANSWER`] bytes) within [`ANSWER_TIMEOUT`], connections are capped
//! ([`MAX_CONNECTIONS`]), and nothing it says reaches beyond the relayed
//! bytes of a connection the host opened. Everything lives in the pod netns
//! and ends with [`PortForward::stop`] (or when this is dropped).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener as StdListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hypervisor::VsockEndpoint;
use protocols::port_forward::{ERR_PREFIX, MAX_ANSWER, OK, REQUEST_PREFIX};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long opening the vsock stream to the agent may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the agent may take to answer (it tries IPv4 then IPv6 on the
/// guest's loopback, 5 s each at most).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(12);
/// Most connections relayed at once per pod; more are reset.
pub const MAX_CONNECTIONS: usize = 64;
/// How long an iptables call may wait for the xtables lock.
const XTABLES_WAIT_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum PortForwardError {
    #[error("entering network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("listening on the pod's loopback: {0}")]
    Listen(#[source] std::io::Error),
    #[error("NAT redirect: {0}")]
    Nat(#[source] crate::network::NetworkError),
    #[error("original destination of a redirected connection: {0}")]
    OriginalDst(#[source] nix::Error),
    #[error("connection to our own port {0} (not redirected)")]
    NotRedirected(u16),
    #[error("reaching the agent's port-forward port: {0}")]
    Dial(#[source] std::io::Error),
    #[error("the agent did not answer within {ANSWER_TIMEOUT:?}")]
    AnswerTimeout,
    #[error("the agent's answer: {0}")]
    Answer(#[source] AnswerError),
    #[error("relaying port {port}: {source}")]
    Relay {
        port: u16,
        #[source]
        source: std::io::Error,
    },
}

/// What is wrong with the agent's answer line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnswerError {
    #[error("longer than {MAX_ANSWER} bytes")]
    TooLong,
    #[error("connection closed before the answer ended")]
    Truncated,
    #[error("refused: {0}")]
    Refused(String),
    #[error("not an answer: {0:?}")]
    Malformed(String),
}

pub type Result<T> = std::result::Result<T, PortForwardError>;

/// The request line for `port`.
pub fn request(port: u16) -> String {
    format!("{REQUEST_PREFIX}{port}\n")
}

/// Reads the agent's answer line: at most [`MAX_ANSWER`] bytes, one at a
/// time so relayed bytes after it stay in the stream. `Ok` means connected.
pub async fn read_answer<R: AsyncRead + Unpin>(r: &mut R) -> std::result::Result<(), AnswerError> {
    let mut line = Vec::with_capacity(16);
    loop {
        let mut b = [0u8; 1];
        match r.read(&mut b).await {
            Ok(0) | Err(_) => return Err(AnswerError::Truncated),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() >= MAX_ANSWER {
                    return Err(AnswerError::TooLong);
                }
            }
        }
    }
    parse_answer(&line)
}

/// Parses an answer line (without its newline). The refusal's text is kept
/// printable: it ends up in the shim's log.
pub fn parse_answer(line: &[u8]) -> std::result::Result<(), AnswerError> {
    let printable = |b: &[u8]| -> String {
        String::from_utf8_lossy(b)
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect()
    };
    if line == OK.as_bytes() {
        Ok(())
    } else if let Some(reason) = line.strip_prefix(ERR_PREFIX.as_bytes()) {
        Err(AnswerError::Refused(printable(reason)))
    } else {
        Err(AnswerError::Malformed(printable(line)))
    }
}

/// Sends the request for `port` on `guest` and waits for the answer.
pub async fn handshake<S>(guest: &mut S, port: u16) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    handshake_within(guest, port, ANSWER_TIMEOUT).await
}

async fn handshake_within<S>(guest: &mut S, port: u16, limit: Duration) -> Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async {
        guest
            .write_all(request(port).as_bytes())
            .await
            .map_err(PortForwardError::Dial)?;
        read_answer(guest).await.map_err(PortForwardError::Answer)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .map_err(|_| PortForwardError::AnswerTimeout)?
}

/// Relays `client` and `guest` until both directions are closed (an EOF
/// is passed on as a half-close). Returns (bytes to guest, bytes back).
pub async fn relay<A, B>(client: &mut A, guest: &mut B, port: u16) -> Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    tokio::io::copy_bidirectional(client, guest)
        .await
        .map_err(|source| PortForwardError::Relay { port, source })
}

/// A stream to the agent, over either vsock flavour.
trait GuestStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> GuestStream for T {}

async fn dial(endpoint: &VsockEndpoint) -> Result<Box<dyn GuestStream>> {
    let port = protocols::PORT_FORWARD_VSOCK_PORT;
    match endpoint {
        VsockEndpoint::Hybrid { uds_path } => {
            agent_client::dial::hybrid_connect(uds_path, port, DIAL_TIMEOUT)
                .await
                .map(|s| Box::new(s) as Box<dyn GuestStream>)
                .map_err(PortForwardError::Dial)
        }
        VsockEndpoint::Kernel { cid } => {
            let addr = tokio_vsock::VsockAddr::new(*cid, port);
            match tokio::time::timeout(DIAL_TIMEOUT, tokio_vsock::VsockStream::connect(addr)).await
            {
                Ok(Ok(s)) => Ok(Box::new(s)),
                Ok(Err(e)) => Err(PortForwardError::Dial(e)),
                Err(_) => Err(PortForwardError::Dial(std::io::ErrorKind::TimedOut.into())),
            }
        }
    }
}

/// The port a redirected connection was meant for.
fn original_port(conn: &TcpStream) -> Result<u16> {
    use nix::sys::socket::{getsockopt, sockopt};
    let fd = conn.as_fd();
    let v6 = conn.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    let port_be = if v6 {
        getsockopt(&fd, sockopt::Ip6tOriginalDst)
            .map_err(PortForwardError::OriginalDst)?
            .sin6_port
    } else {
        getsockopt(&fd, sockopt::OriginalDst)
            .map_err(PortForwardError::OriginalDst)?
            .sin_port
    };
    Ok(u16::from_be(port_be))
}

/// One client connection: find its port, reach the agent, relay.
async fn serve_one(client: &mut TcpStream, own_port: u16, endpoint: &VsockEndpoint) -> Result<()> {
    let port = original_port(client)?;
    if port == own_port {
        return Err(PortForwardError::NotRedirected(port));
    }
    let mut guest = dial(endpoint).await?;
    handshake(&mut guest, port).await?;
    let (up, down) = relay(client, &mut guest, port).await?;
    tracing::debug!(port, up, down, "port-forward: connection done");
    Ok(())
}

/// Binds the listeners in `netns` from a thread of their own that entered
/// it (setns changes only the calling thread; the runtime's stay put).
fn bind_in_netns(netns: &Path) -> Result<(StdListener, Option<StdListener>)> {
    let path = netns.to_path_buf();
    let worker = std::thread::Builder::new()
        .name("portfwd-netns".into())
        .spawn(move || {
            let f = std::fs::File::open(&path).map_err(|source| PortForwardError::Netns {
                path: path.clone(),
                source,
            })?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                PortForwardError::Netns {
                    path: path.clone(),
                    source: e.into(),
                }
            })?;
            let v4 = StdListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                .map_err(PortForwardError::Listen)?;
            let port = v4.local_addr().map_err(PortForwardError::Listen)?.port();
            // No IPv6 in the netns (or the port taken there): IPv4 only.
            let v6 = StdListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, port))).ok();
            for l in std::iter::once(&v4).chain(v6.as_ref()) {
                l.set_nonblocking(true).map_err(PortForwardError::Listen)?;
            }
            Ok((v4, v6))
        })
        .map_err(PortForwardError::Listen)?;
    worker
        .join()
        .map_err(|_| PortForwardError::Listen(std::io::Error::other("netns thread panicked")))?
}

/// The NAT rule's arguments (after `-A`/`-D OUTPUT`), for IPv4 or IPv6.
pub fn nat_rule(v6: bool, port: u16) -> Vec<String> {
    let dst = if v6 { "::1/128" } else { "127.0.0.0/8" };
    let port = port.to_string();
    [
        "-o",
        "lo",
        "-p",
        "tcp",
        "-d",
        dst,
        "!",
        "--dport",
        &port,
        "-j",
        "REDIRECT",
        "--to-ports",
        &port,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Adds (`-A`) or deletes (`-D`) the NAT rule in `netns`.
async fn nat(netns: &Path, op: &str, v6: bool, port: u16) -> Result<()> {
    let tool = if v6 { "ip6tables" } else { "iptables" };
    let mut args: Vec<String> = vec![
        tool.to_owned(),
        "-w".into(),
        XTABLES_WAIT_SECS.into(),
        "-t".into(),
        "nat".into(),
        op.into(),
        "OUTPUT".into(),
    ];
    args.extend(nat_rule(v6, port));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::network::in_netns(netns, &args)
        .await
        .map(drop)
        .map_err(PortForwardError::Nat)
}

/// The running port-forward of one pod.
pub struct PortForward {
    sandbox: String,
    netns: PathBuf,
    port: u16,
    v6: bool,
    accept: tokio::task::AbortHandle,
    stopped: AtomicBool,
}

impl PortForward {
    /// Starts port-forward into the VM for the pod whose netns is `netns`.
    pub async fn start(sandbox: &str, netns: &Path, endpoint: VsockEndpoint) -> Result<Self> {
        let t = std::time::Instant::now();
        let ns = netns.to_path_buf();
        let (v4, v6) = tokio::task::spawn_blocking(move || bind_in_netns(&ns))
            .await
            .map_err(|e| PortForwardError::Listen(std::io::Error::other(e)))??;
        let port = v4.local_addr().map_err(PortForwardError::Listen)?.port();
        nat(netns, "-A", false, port).await?;
        let mut has_v6 = false;
        if v6.is_some() {
            match nat(netns, "-A", true, port).await {
                Ok(()) => has_v6 = true,
                Err(e) => tracing::info!(sandbox, error = %e, "port-forward: IPv4 only"),
            }
        }
        let mut listeners = vec![TcpListener::from_std(v4).map_err(PortForwardError::Listen)?];
        if let (true, Some(l)) = (has_v6, v6) {
            listeners.push(TcpListener::from_std(l).map_err(PortForwardError::Listen)?);
        }
        let accept = tokio::spawn(accept_loop(sandbox.to_owned(), listeners, port, endpoint));
        tracing::info!(sandbox, port, ipv6 = has_v6, netns = %netns.display(),
            ms = t.elapsed().as_secs_f64() * 1000.0, "port-forward ready");
        Ok(PortForward {
            sandbox: sandbox.to_owned(),
            netns: netns.to_path_buf(),
            port,
            v6: has_v6,
            accept: accept.abort_handle(),
            stopped: AtomicBool::new(false),
        })
    }

    /// The listener's port in the pod netns.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes the listeners and every relayed connection, and removes the
    /// NAT rules (the netns may outlive the pod). Idempotent.
    pub async fn stop(&self) {
        self.accept.abort();
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        for v6 in std::iter::once(false).chain(self.v6.then_some(true)) {
            // Gone with the netns is fine too.
            if let Err(e) = nat(&self.netns, "-D", v6, self.port).await {
                tracing::debug!(sandbox = %self.sandbox, error = %e, "port-forward: removing the NAT rule");
            }
        }
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        // The relays end with the accept task (it owns them).
        self.accept.abort();
    }
}

/// A pod's port-forward, started in the background so pod start does not
/// wait for the NAT rules; [`Slot::stop`] also ends one still starting.
#[derive(Default)]
pub struct Slot {
    state: Arc<tokio::sync::Mutex<SlotState>>,
}

#[derive(Default)]
struct SlotState {
    running: Option<PortForward>,
    stopped: bool,
}

impl Slot {
    /// Starts port-forward for `sandbox` in `netns` in a task of its own; a
    /// failure is logged, never the pod's.
    pub fn start(sandbox: &str, netns: &Path, endpoint: VsockEndpoint) -> Slot {
        let slot = Slot::default();
        let state = slot.state.clone();
        let (sandbox, netns) = (sandbox.to_owned(), netns.to_path_buf());
        tokio::spawn(async move {
            let r = PortForward::start(&sandbox, &netns, endpoint).await;
            let mut st = state.lock().await;
            match r {
                Ok(pf) if st.stopped => pf.stop().await,
                Ok(pf) => st.running = Some(pf),
                Err(e) => {
                    tracing::warn!(sandbox, error = %e, "port-forward unavailable");
                }
            }
        });
        slot
    }

    /// Ends port-forward, whether running or still starting. Idempotent.
    pub async fn stop(&self) {
        let mut st = self.state.lock().await;
        st.stopped = true;
        if let Some(pf) = st.running.take() {
            pf.stop().await;
        }
    }
}

/// Accepts on every listener; each connection is served in a task owned by
/// this one, so aborting it ends them all.
async fn accept_loop(
    sandbox: String,
    listeners: Vec<TcpListener>,
    own_port: u16,
    endpoint: VsockEndpoint,
) {
    let endpoint = Arc::new(endpoint);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<TcpStream>(16);
    let mut accepters = JoinSet::new();
    for l in listeners {
        let tx = tx.clone();
        let sandbox = sandbox.clone();
        accepters.spawn(async move {
            loop {
                match l.accept().await {
                    Ok((c, _)) => {
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(sandbox, error = %e, "port-forward: accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    drop(tx);
    loop {
        tokio::select! {
            c = rx.recv() => {
                let Some(conn) = c else { return };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(sandbox, "port-forward: {MAX_CONNECTIONS} connections open, resetting a new one");
                    reset(conn);
                    continue;
                };
                let endpoint = endpoint.clone();
                let sandbox = sandbox.clone();
                conns.spawn(async move {
                    let _slot = slot;
                    if let Err(e) = serve_conn(conn, own_port, &endpoint).await {
                        tracing::info!(sandbox, error = %e, "port-forward: connection failed");
                    }
                });
            }
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Serves a connection; on failure it is reset, so the client (containerd)
/// reports an error rather than a clean, empty stream.
async fn serve_conn(mut conn: TcpStream, own_port: u16, endpoint: &VsockEndpoint) -> Result<()> {
    let r = serve_one(&mut conn, own_port, endpoint).await;
    if r.is_err() {
        reset(conn);
    }
    r
}

/// Closes `conn` with a reset (SO_LINGER 0).
fn reset(conn: TcpStream) {
    let _ = conn.set_zero_linger();
    drop(conn);
}

#[cfg(test)]
#[path = "portforward_tests.rs"]
mod tests;
