//! Copies a process's stdio between containerd's fifos (or log URIs) and
//! the agent's streams.

use std::sync::Arc;
use std::time::Duration;

use agent_client::Agent;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::process::Process;

/// Largest chunk asked of the agent per ReadStdout/ReadStderr.
const CHUNK: u32 = 64 * 1024;
/// A reader that takes nothing for this long is abandoned: its output is
/// discarded so a stalled client never holds up Kill, Wait or Delete.
const STALL: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

type Sink = Box<dyn AsyncWrite + Send + Unpin>;

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
    if uri.starts_with("binary://") {
        tracing::warn!(
            uri,
            "binary:// log URIs are not supported yet; output discarded"
        );
        return None;
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
    uri: String,
) {
    let mut out = open_sink(&uri).await;
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
