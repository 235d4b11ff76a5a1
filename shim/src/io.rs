//! Copies a process's stdio between containerd's fifos (or log URIs) and
//! the agent's streams.

use std::sync::Arc;
use std::time::Duration;

use agent_client::Agent;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::process::Process;

/// Largest chunk asked of the agent per ReadStdout/ReadStderr: the agent's
/// own cap (1 MiB), so a busy stream costs few round trips.
const CHUNK: u32 = 1024 * 1024;
/// A reader that takes nothing for this long is abandoned: its output is
/// discarded so a stalled client never holds up Kill, Wait or Delete.
const STALL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

pub type Sink = Box<dyn AsyncWrite + Send + Unpin>;

/// Where a process's stdout and stderr go. A `binary://` URI on stdout
/// starts one logging binary for both streams, as containerd's shims do.
pub async fn open_outputs(
    stdout: &str,
    stderr: &str,
    terminal: bool,
    container_id: &str,
    namespace: &str,
) -> (Option<Sink>, Option<Sink>) {
    if stdout.starts_with("binary://") {
        match spawn_log_binary(stdout, container_id, namespace).await {
            Ok((o, e)) => return (Some(o), (!terminal).then_some(e)),
            Err(e) => {
                tracing::warn!(uri = stdout, error = %e, "logging binary failed; output discarded");
                return (None, None);
            }
        }
    }
    let out = open_sink(stdout).await;
    let err = if terminal {
        None
    } else {
        open_sink(stderr).await
    };
    (out, err)
}

/// Splits `binary:///path?k=v&k2` into the program and its arguments
/// (`k v k2`), containerd's convention.
fn parse_binary_uri(uri: &str) -> std::io::Result<(String, Vec<String>)> {
    let rest = uri.strip_prefix("binary://").unwrap_or(uri);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(std::io::Error::other(format!(
            "logging binary path {path:?} is not absolute"
        )));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(k.to_owned());
        if !v.is_empty() {
            args.push(v.to_owned());
        }
    }
    Ok((path.to_owned(), args))
}

/// Starts the logging binary with stdout on fd 3, stderr on fd 4 and a
/// readiness pipe on fd 5 that it closes when ready.
async fn spawn_log_binary(
    uri: &str,
    container_id: &str,
    namespace: &str,
) -> std::io::Result<(Sink, Sink)> {
    use std::os::fd::{AsRawFd, OwnedFd};
    let (path, args) = parse_binary_uri(uri)?;
    let pipe = || -> std::io::Result<(OwnedFd, OwnedFd)> {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
    };
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(&args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2, which is async-signal-safe, runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop((out_r, err_r, ready_w));
    // Ready when the binary closes fd 5 (EOF on our end).
    let mut ready = pipe::Receiver::from_owned_fd(ready_r)?;
    let mut byte = [0u8; 1];
    if tokio::time::timeout(Duration::from_secs(10), ready.read(&mut byte))
        .await
        .is_err()
    {
        let _ = child.start_kill();
        return Err(std::io::Error::other(
            "logging binary did not get ready within 10 s",
        ));
    }
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let out = pipe::Sender::from_owned_fd(out_w)?;
    let err = pipe::Sender::from_owned_fd(err_w)?;
    Ok((Box::new(out), Box::new(err)))
}

/// Opens where containerd wants the output: a fifo path (or `fifo://`),
/// or a `file://` URI (appended). `None` discards.
async fn open_sink(uri: &str) -> Option<Sink> {
    if uri.is_empty() {
        return None;
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
        {
            Ok(f) => Some(Box::new(f)),
            Err(e) => {
                tracing::warn!(path, error = %e, "cannot open log file; output discarded");
                None
            }
        };
    }
    let path = uri.strip_prefix("fifo://").unwrap_or(uri);
    match pipe::OpenOptions::new().open_sender(path) {
        Ok(s) => Some(Box::new(s)),
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot open output fifo; output discarded");
            None
        }
    }
}

/// Copies until the agent reports end of stream. The agent's stream is
/// always drained, even when the reader went away or stalled, so the
/// process in the guest never blocks on a full pipe.
pub async fn copy_out(
    agent: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
    stream: Stream,
    mut out: Option<Sink>,
) {
    loop {
        let chunk = match stream {
            Stream::Stdout => agent.read_stdout(&container_id, &exec_id, CHUNK).await,
            Stream::Stderr => agent.read_stderr(&container_id, &exec_id, CHUNK).await,
        };
        let data = match chunk {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(container = %container_id, exec = %exec_id, error = %e, "{stream:?} ended");
                break;
            }
        };
        if let Some(w) = out.as_mut() {
            match tokio::time::timeout(STALL, w.write_all(&data)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(container = %container_id, exec = %exec_id, error = %e, "{stream:?} reader gone; discarding");
                    out = None;
                }
                Err(_) => {
                    tracing::warn!(container = %container_id, exec = %exec_id, "{stream:?} reader stalled; discarding");
                    out = None;
                }
            }
        }
    }
    if let Some(mut w) = out {
        let _ = tokio::time::timeout(STALL, w.flush()).await;
    }
}

/// Forwards containerd's stdin fifo to the process until EOF or CloseIO,
/// then closes the process's stdin in the guest.
pub async fn copy_in(
    agent: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
    process: Arc<Process>,
) {
    let path = process
        .stdio
        .stdin
        .strip_prefix("fifo://")
        .unwrap_or(&process.stdio.stdin)
        .to_owned();
    // Read-write: opening never blocks and reads never see a spurious EOF
    // before containerd's writer has connected; CloseIO ends the copy.
    let mut fifo = match pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot open stdin fifo");
            return;
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut closing = false;
    loop {
        let n = if closing {
            // After CloseIO: forward only what is already buffered.
            fifo.try_read(&mut buf).unwrap_or_default()
        } else {
            tokio::select! {
                r = fifo.read(&mut buf) => r.unwrap_or(0),
                _ = process.stdin_closed.notified() => { closing = true; continue; }
            }
        };
        if n == 0 {
            break;
        }
        let mut sent = 0;
        while sent < n {
            match agent
                .write_stdin(&container_id, &exec_id, &buf[sent..n])
                .await
            {
                Ok(w) if w > 0 => sent += w as usize,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(container = %container_id, exec = %exec_id, error = %e, "stdin write failed");
                    return;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(&container_id, &exec_id).await {
        tracing::debug!(container = %container_id, exec = %exec_id, error = %e, "CloseStdin failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_uri_becomes_program_and_arguments() {
        let (p, a) = parse_binary_uri("binary:///usr/bin/logger?-id=abc&--json").expect("parses");
        assert_eq!(p, "/usr/bin/logger");
        assert_eq!(a, vec!["-id", "abc", "--json"]);
        assert!(parse_binary_uri("binary://relative/logger").is_err());
    }

    #[tokio::test]
    async fn logging_binary_gets_both_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("logger.sh");
        let log = dir.path().join("out.log");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\ncat <&3 >> {0} & cat <&4 >> {0}; wait\n",
                log.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let uri = format!("binary://{}", script.display());
        let (out, err) = open_outputs(&uri, "", false, "c1", "ns").await;
        let (mut out, mut err) = (out.expect("stdout sink"), err.expect("stderr sink"));
        out.write_all(b"to stdout\n").await.expect("write");
        err.write_all(b"to stderr\n").await.expect("write");
        drop((out, err));
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            text.contains("to stdout") && text.contains("to stderr"),
            "{text:?}"
        );
    }
}
