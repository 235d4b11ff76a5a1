//! The per-sandbox metrics endpoint: HTTP/1.1 `GET /metrics` on a unix
//! socket in the sandbox's directory, one request per connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

/// Largest request head read.
const MAX_REQUEST: usize = 8 << 10;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `sandbox`'s metrics on `<base>/shim-monitor.sock` for as long as
/// the process lives (the sandbox's directory, and the socket with it, go
/// at teardown).
pub fn spawn(sandbox: &str, base: &Path, vm_dir: &Path) {
    let socket = base.join(super::SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = match UnixListener::bind(&socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(sandbox, socket = %socket.display(), error = %e, "metrics socket");
            return;
        }
    };
    // Root only, like every socket of the sandbox (the directory is 0700
    // too, but a socket's own mode must not depend on where it lives).
    if let Err(e) = std::fs::set_permissions(
        &socket,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600),
    ) {
        tracing::warn!(sandbox, socket = %socket.display(), error = %e, "metrics socket mode");
        return;
    }
    tracing::debug!(sandbox, socket = %socket.display(), "serving metrics");
    let (sandbox, vm_dir) = (sandbox.to_owned(), vm_dir.to_path_buf());
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((conn, _)) => {
                    tokio::spawn(answer(conn, sandbox.clone(), vm_dir.clone()));
                }
                Err(e) => {
                    tracing::warn!(sandbox = %sandbox, error = %e, "metrics accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
}

async fn read_head(conn: &mut UnixStream) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

async fn answer(mut conn: UnixStream, sandbox: String, vm_dir: PathBuf) {
    let head = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut conn)).await {
        Ok(Ok(h)) => h,
        _ => return,
    };
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = if head.starts_with("GET ") && (path == "/metrics" || path == "/") {
        match tokio::task::spawn_blocking(move || super::render(&sandbox, &vm_dir)).await {
            Ok(text) => ("200 OK", text),
            Err(e) => ("500 Internal Server Error", format!("{e}\n")),
        }
    } else {
        ("404 Not Found", "GET /metrics\n".to_owned())
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = conn.write_all(reply.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Fetches the metrics served on `socket` (the body of `GET /metrics`).
pub async fn fetch(socket: &Path) -> std::io::Result<String> {
    let exchange = async {
        let mut conn = UnixStream::connect(socket).await?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&reply).into_owned())
    };
    let reply = tokio::time::timeout(READ_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "metrics request timed out")
        })??;
    let (head, body) = reply
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP head in the reply"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!(
            "metrics: {}",
            head.lines().next().unwrap_or("")
        )));
    }
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_metrics_over_the_socket() {
        let d = tempfile::tempdir().expect("tempdir");
        spawn("sb-served", d.path(), d.path());
        let text = fetch(&d.path().join(crate::metrics::SOCKET))
            .await
            .expect("metrics");
        assert!(
            text.contains("kata_shim_sandbox_up{sandbox=\"sb-served\"} 1"),
            "{text}"
        );
        let mut conn = UnixStream::connect(d.path().join(crate::metrics::SOCKET))
            .await
            .expect("connect");
        conn.write_all(b"GET /other HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut reply = String::new();
        conn.read_to_string(&mut reply).await.expect("read");
        assert!(reply.starts_with("HTTP/1.1 404"), "{reply}");
    }
}
