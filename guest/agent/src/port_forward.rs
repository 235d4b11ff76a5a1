//! Port-forward, guest side: the host's CRI PortForward reaches a TCP port on
//! the guest's loopback through vsock port [`protocols::PORT_FORWARD_VSOCK_PORT`].
//!
//! Containers share the VM's network namespace (the runtime never creates
//! or joins a network namespace for them, see `runtime::mod`), so the
//! agent's own `127.0.0.1`/`::1` is the pod's localhost, where `kubectl
//! port-forward` expects to land.
//!
//! Per connection: one request line `TCP <port>\n` (bounded, within
//! [`HEADER_TIMEOUT`]), a connect to `127.0.0.1:<port>` then `[::1]:<port>`
//! (containerd's own order), the answer `OK\n` or `ERR <reason>\n`, then
//! bytes both ways (see [`relay`] for how each side's end is passed on).
//! Always on: it gives the host nothing the pod's containers do not already
//! offer on their loopback.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use protocols::port_forward::{ERR_PREFIX, MAX_ANSWER, MAX_REQUEST, OK, REQUEST_PREFIX};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// How long the host may take to send its request line.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connect to the guest's loopback may take (a local connect is
/// answered at once; this only bounds a SYN backlog that is full).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most connections relayed at once; more are answered with an error.
const MAX_CONNECTIONS: usize = 256;
/// How long the app's side may go on after the host's side ended.
const GRACE: Duration = Duration::from_secs(5);
/// How long bind is retried (the vsock transport may still be probing).
const BIND_ATTEMPTS: u32 = 500;

/// Why a request was refused (its text goes to the host in the `ERR` line).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("request line longer than {MAX_REQUEST} bytes")]
    TooLong,
    #[error("connection closed before the request line ended")]
    Truncated,
    #[error("no request line within {HEADER_TIMEOUT:?}")]
    Timeout,
    #[error("malformed request (want \"TCP <port>\")")]
    Malformed,
    #[error("port out of range 1..=65535")]
    BadPort,
}

/// Reads the request line (at most [`MAX_REQUEST`] bytes, one at a time so
/// nothing past the newline is taken from the stream) and parses it.
pub async fn read_request<R: AsyncRead + Unpin>(r: &mut R) -> Result<u16, RequestError> {
    let mut line = Vec::with_capacity(MAX_REQUEST);
    loop {
        let mut b = [0u8; 1];
        match r.read(&mut b).await {
            Ok(0) | Err(_) => return Err(RequestError::Truncated),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                // The newline counts in the limit.
                if line.len() >= MAX_REQUEST {
                    return Err(RequestError::TooLong);
                }
            }
        }
    }
    parse_request(&line)
}

/// Parses `TCP <port>` (the line without its newline): ASCII digits only, no
/// sign, no spaces, no leading zeros beyond a lone digit.
pub fn parse_request(line: &[u8]) -> Result<u16, RequestError> {
    let digits = line
        .strip_prefix(REQUEST_PREFIX.as_bytes())
        .ok_or(RequestError::Malformed)?;
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::Malformed);
    }
    if digits[0] == b'0' {
        return Err(RequestError::BadPort);
    }
    let port: u32 = digits
        .iter()
        .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'));
    u16::try_from(port).map_err(|_| RequestError::BadPort)
}

/// The one-line refusal sent to the host: `ERR <reason>\n`, single line and
/// within [`MAX_ANSWER`] bytes whatever `reason` holds.
pub fn refusal(reason: &str) -> String {
    let room = MAX_ANSWER - ERR_PREFIX.len() - 1;
    let mut text: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    while text.len() > room {
        text.pop();
    }
    format!("{ERR_PREFIX}{text}\n")
}

/// Connects to `port` on the loopback, IPv4 first, then IPv6 (as containerd
/// dials `localhost` on a runc pod).
async fn connect_loopback(port: u16) -> std::io::Result<TcpStream> {
    let mut last = None;
    for ip in [Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()] {
        let addr = SocketAddr::new(ip, port);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = Some(format!("{addr}: {e}")),
            Err(_) => last = Some(format!("{addr}: timed out")),
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        last.unwrap_or_default(),
    ))
}

/// Serves one host connection: request, connect, answer, relay.
pub async fn handle<S>(mut host: S) -> Result<(u64, u64), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let port = match tokio::time::timeout(HEADER_TIMEOUT, read_request(&mut host)).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => return refuse(&mut host, &e.to_string()).await,
        Err(_) => return refuse(&mut host, &RequestError::Timeout.to_string()).await,
    };
    let local = match connect_loopback(port).await {
        Ok(s) => s,
        Err(e) => return refuse(&mut host, &format!("connect to port {port}: {e}")).await,
    };
    host.write_all(format!("{OK}\n").as_bytes())
        .await
        .map_err(|e| format!("answering the host: {e}"))?;
    relay(host, local, port).await
}

/// Relays until the connection is over: the host's EOF is passed on to the
/// app as a half-close, and the app's answer may follow for [`GRACE`] (as
/// containerd itself waits 1 s after one direction ended); the app's EOF
/// ends the whole connection at once, since a half-close towards the host
/// is lost on hybrid vsock (vhost-device-vsock passes on only a full
/// shutdown) and a host waiting for EOF would wait forever.
async fn relay<S>(host: S, local: TcpStream, port: u16) -> Result<(u64, u64), String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut host_r, mut host_w) = tokio::io::split(host);
    let (mut local_r, mut local_w) = local.into_split();
    let up = async {
        let r = tokio::io::copy(&mut host_r, &mut local_w).await;
        let _ = local_w.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut local_r, &mut host_w).await;
        let _ = host_w.shutdown().await;
        r
    };
    tokio::pin!(up, down);
    let err = |e: std::io::Error| format!("relaying port {port}: {e}");
    tokio::select! {
        sent = &mut up => {
            let sent = sent.map_err(err)?;
            match tokio::time::timeout(GRACE, &mut down).await {
                Ok(back) => Ok((sent, back.map_err(err)?)),
                Err(_) => Err(format!("port {port}: no end {GRACE:?} after the host's")),
            }
        }
        back = &mut down => Ok((0, back.map_err(err)?)),
    }
}

async fn refuse<S: AsyncWrite + Unpin>(host: &mut S, reason: &str) -> Result<(u64, u64), String> {
    let _ = host.write_all(refusal(reason).as_bytes()).await;
    let _ = host.shutdown().await;
    Err(reason.to_owned())
}

/// Listens on `port` and relays each connection in a task of its own.
pub async fn serve(port: u32) {
    let mut attempt = 0;
    let listener = loop {
        match VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port)) {
            Ok(l) => break l,
            Err(e) if attempt >= BIND_ATTEMPTS => {
                tracing::error!(port, error = %e, "port-forward: bind failed");
                return;
            }
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "port-forward: accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = refuse(&mut conn, "too many port-forward connections").await;
            });
            continue;
        };
        tokio::spawn(async move {
            let _slot = slot;
            match handle(conn).await {
                Ok((up, down)) => tracing::debug!(up, down, "port-forward: connection done"),
                Err(e) => tracing::info!(error = %e, "port-forward: connection ended"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(parse_request(b"TCP 8080"), Ok(8080));
        assert_eq!(parse_request(b"TCP 1"), Ok(1));
        assert_eq!(parse_request(b"TCP 65535"), Ok(65535));
        for bad in [
            &b""[..],
            b"TCP",
            b"TCP ",
            b"tcp 80",
            b"UDP 53",
            b"TCP  80",
            b"TCP +80",
            b"TCP -1",
            b"TCP 80 ",
            b"TCP 80\r",
            b"TCP 0x50",
            b"TCP 123456",
        ] {
            assert_eq!(
                parse_request(bad),
                Err(RequestError::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(parse_request(b"TCP 0"), Err(RequestError::BadPort));
        assert_eq!(parse_request(b"TCP 080"), Err(RequestError::BadPort));
        assert_eq!(parse_request(b"TCP 65536"), Err(RequestError::BadPort));
        assert_eq!(parse_request(b"TCP 99999"), Err(RequestError::BadPort));
    }

    #[tokio::test]
    async fn request_reading_is_bounded_and_exact() {
        let mut r: &[u8] = b"TCP 80\nrest";
        assert_eq!(read_request(&mut r).await, Ok(80));
        assert_eq!(r, b"rest", "nothing past the newline is consumed");
        let long = [b'1'; 64];
        let mut r: &[u8] = &long;
        assert_eq!(read_request(&mut r).await, Err(RequestError::TooLong));
        assert!(r.len() >= 64 - MAX_REQUEST, "stops reading at the bound");
        let mut r: &[u8] = b"TCP 80";
        assert_eq!(read_request(&mut r).await, Err(RequestError::Truncated));
    }

    #[test]
    fn refusals_are_one_bounded_line() {
        let r = refusal(&format!("a\nb\r{}", "x".repeat(500)));
        assert!(r.starts_with("ERR a b "), "{r:?}");
        assert!(r.len() <= MAX_ANSWER, "{}", r.len());
        assert_eq!(r.matches('\n').count(), 1);
        assert!(r.ends_with('\n'));
        let r = refusal(&"é".repeat(100));
        assert!(r.len() <= MAX_ANSWER);
    }

    /// A full relay over a socketpair standing in for vsock: the request,
    /// OK, data both ways, half-close passed on both ways.
    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = server.local_addr().expect("addr").port();
        // The "container": reads everything, then answers with its reverse.
        let app = tokio::spawn(async move {
            let (mut s, _) = server.accept().await.expect("accept");
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.expect("read");
            got.reverse();
            s.write_all(&got).await.expect("write");
        });
        let (host, guest) = tokio::net::UnixStream::pair().expect("pair");
        let relay = tokio::spawn(handle(guest));
        let (mut rd, mut wr) = host.into_split();
        wr.write_all(format!("TCP {port}\n").as_bytes())
            .await
            .expect("request");
        let mut ok = [0u8; 3];
        rd.read_exact(&mut ok).await.expect("answer");
        assert_eq!(&ok, b"OK\n");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        wr.write_all(&data).await.expect("data");
        wr.shutdown().await.expect("half-close");
        let mut back = Vec::new();
        rd.read_to_end(&mut back).await.expect("read back");
        let mut want = data.clone();
        want.reverse();
        assert!(back == want, "{} bytes back", back.len());
        app.await.expect("app");
        let (up, down) = relay.await.expect("join").expect("relay");
        assert_eq!((up, down), (data.len() as u64, data.len() as u64));
    }

    /// The app closing ends the connection towards the host at once, even
    /// while the host keeps its side open.
    #[tokio::test]
    async fn the_apps_close_ends_the_connection() {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = server.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.expect("accept");
            s.write_all(b"bye").await.expect("write");
        });
        let (mut host, guest) = tokio::net::UnixStream::pair().expect("pair");
        let relay = tokio::spawn(handle(guest));
        host.write_all(format!("TCP {port}\n").as_bytes())
            .await
            .expect("request");
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), host.read_to_end(&mut got))
            .await
            .expect("EOF without the host closing")
            .expect("read");
        assert_eq!(got, b"OK\nbye");
        assert_eq!(relay.await.expect("join"), Ok((0, 3)));
    }

    #[tokio::test]
    async fn closed_port_and_bad_requests_are_refused() {
        // A port nothing listens on: bind one, learn it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        for (req, want) in [
            (format!("TCP {port}\n"), "ERR connect to port"),
            ("GET / HTTP/1.1\n".to_owned(), "ERR malformed"),
            ("TCP 70000\n".to_owned(), "ERR port out of range"),
            ("x".repeat(40), "ERR request line longer"),
        ] {
            let (mut host, guest) = tokio::net::UnixStream::pair().expect("pair");
            let relay = tokio::spawn(handle(guest));
            host.write_all(req.as_bytes()).await.expect("request");
            // Unread request bytes may turn the close into a reset: keep
            // what arrived before it.
            let mut got = Vec::new();
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = host.read(&mut buf).await {
                got.extend_from_slice(&buf[..n]);
            }
            let answer = String::from_utf8_lossy(&got);
            assert!(answer.starts_with(want), "{req:?}: {answer:?}");
            assert!(answer.len() <= MAX_ANSWER && answer.ends_with('\n'));
            assert!(relay.await.expect("join").is_err());
        }
    }
}
