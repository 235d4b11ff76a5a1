//! Dialing the agent: kernel vsock, or hybrid vsock (a unix socket where the
//! VMM's vsock backend expects `CONNECT <port>\n` and answers `OK ...\n`).

use std::io;
use std::path::Path;
use std::time::Duration;

use protocols::ttrpc;
use protocols::ttrpc::r#async::transport::Socket;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::Address;

/// Longest handshake answer accepted.
const MAX_HANDSHAKE_LINE: usize = 128;

/// Reads one `\n`-terminated line one byte at a time, so nothing after the
/// newline is consumed (the rest of the stream belongs to ttrpc).
pub async fn read_line_bytewise<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<String> {
    let mut line = Vec::with_capacity(32);
    loop {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed during handshake after {:?}",
                    String::from_utf8_lossy(&line)
                ),
            ));
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        line.push(byte[0]);
        if line.len() > MAX_HANDSHAKE_LINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake answer too long",
            ));
        }
    }
}

/// Connects `uds_path` and performs the hybrid vsock handshake for `port`,
/// all within `timeout`. Returns the stream positioned right after the answer.
pub async fn hybrid_connect(
    uds_path: &Path,
    port: u32,
    timeout: Duration,
) -> io::Result<UnixStream> {
    let handshake = async {
        let mut stream = UnixStream::connect(uds_path).await?;
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await?;
        let answer = read_line_bytewise(&mut stream).await?;
        if !answer.starts_with("OK") {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("hybrid vsock handshake for port {port} refused: {answer:?}"),
            ));
        }
        Ok(stream)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "hybrid vsock handshake on {} timed out after {timeout:?}",
                    uds_path.display()
                ),
            )
        })?
}

/// Why one dial attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Connecting the hybrid-vsock socket or its `CONNECT` handshake failed
    /// (the io error's kind says how: NotFound, ConnectionRefused, TimedOut, ...).
    #[error("hybrid vsock: {0}")]
    Hybrid(#[source] io::Error),
    #[error("connecting {url}: {source}")]
    Vsock {
        url: String,
        #[source]
        source: ttrpc::Error,
    },
    #[error("connecting {url} timed out after {timeout:?}")]
    VsockTimeout { url: String, timeout: Duration },
}

/// Opens one ttrpc connection to `addr` (no RPC made yet).
pub async fn dial(addr: &Address, timeout: Duration) -> Result<ttrpc::r#async::Client, DialError> {
    match addr {
        Address::Hybrid { uds_path, port } => {
            let stream = hybrid_connect(uds_path, *port, timeout)
                .await
                .map_err(DialError::Hybrid)?;
            Ok(ttrpc::r#async::Client::new(Socket::new(stream)))
        }
        Address::Vsock { cid, port } => {
            let url = format!("vsock://{cid}:{port}");
            match tokio::time::timeout(timeout, ttrpc::r#async::Client::connect(&url)).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(source)) => Err(DialError::Vsock { url, source }),
                Err(_) => Err(DialError::VsockTimeout { url, timeout }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::UnixListener;

    use super::*;

    /// A fake vsock backend answering the first line with `answer` (or never, if `None`).
    fn fake_backend(path: &Path, answer: Option<&'static str>) -> tokio::task::JoinHandle<String> {
        let listener = UnixListener::bind(path).expect("bind");
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let req = read_line_bytewise(&mut s).await.expect("request line");
            match answer {
                Some(a) => {
                    // Answer and a first payload byte in one write: must not be over-read.
                    s.write_all(format!("{a}\nX").as_bytes())
                        .await
                        .expect("answer");
                    let mut rest = [0u8; 1];
                    let _ = s.read(&mut rest).await;
                }
                None => tokio::time::sleep(Duration::from_secs(10)).await,
            }
            req
        })
    }

    /// Arbitrary answers: never a panic, never more than one line consumed.
    #[tokio::test]
    async fn line_reader_survives_garbage() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2_000 {
            let len = (next() % 300) as usize;
            let data: Vec<u8> = (0..len).map(|_| (next() & 0xff) as u8).collect();
            let mut reader: &[u8] = &data;
            match read_line_bytewise(&mut reader).await {
                Ok(line) => {
                    let nl = data
                        .iter()
                        .position(|&b| b == b'\n')
                        .expect("a line needs a newline");
                    assert_eq!(reader.len(), data.len() - nl - 1, "over-read");
                    assert!(line.len() <= MAX_HANDSHAKE_LINE * 3);
                }
                Err(e) => assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                    ),
                    "{e}"
                ),
            }
        }
    }

    #[tokio::test]
    async fn ok_answer_leaves_payload_unread() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("vsock.sock");
        let srv = fake_backend(&p, Some("OK 1073741824"));
        let mut s = hybrid_connect(&p, 1024, Duration::from_secs(2))
            .await
            .expect("handshake");
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.expect("payload byte");
        assert_eq!(&b, b"X");
        s.write_all(b"y").await.expect("write");
        assert_eq!(srv.await.expect("server"), "CONNECT 1024");
    }

    #[tokio::test]
    async fn non_ok_answer_is_an_error() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("vsock.sock");
        let _srv = fake_backend(&p, Some("FAILED connection refused"));
        let e = hybrid_connect(&p, 1024, Duration::from_secs(2))
            .await
            .expect_err("refused");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(e.to_string().contains("FAILED"), "{e}");
    }

    #[tokio::test]
    async fn silent_backend_times_out() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("vsock.sock");
        let _srv = fake_backend(&p, None);
        let e = hybrid_connect(&p, 1024, Duration::from_millis(100))
            .await
            .expect_err("timeout");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn closed_backend_and_missing_socket_fail() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("vsock.sock");
        let e = hybrid_connect(&p, 1024, Duration::from_secs(1))
            .await
            .expect_err("no socket");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        let listener = UnixListener::bind(&p).expect("bind");
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            drop(s);
        });
        let e = hybrid_connect(&p, 1024, Duration::from_secs(1))
            .await
            .expect_err("closed");
        assert!(
            matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
            ),
            "{e}"
        );
    }
}
