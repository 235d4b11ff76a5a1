//! Copies a process's output from the agent's streams to containerd's fifos.

use std::sync::Arc;

use agent_client::Agent;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;

/// Largest chunk asked of the agent per ReadStdout/ReadStderr.
const CHUNK: u32 = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Opens containerd's fifo for writing; `None` (output discarded) when the
/// path is empty or cannot be opened.
async fn open_fifo(path: &str) -> Option<pipe::Sender> {
    if path.is_empty() {
        return None;
    }
    let path = path.strip_prefix("fifo://").unwrap_or(path);
    match pipe::OpenOptions::new().open_sender(path) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot open output fifo; output discarded");
            None
        }
    }
}

/// Copies until the agent reports end of stream. The agent's stream is
/// always drained, even when the reader went away, so the process in the
/// guest never blocks on a full pipe.
pub async fn copy_out(
    agent: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
    stream: Stream,
    path: String,
) {
    let mut out = open_fifo(&path).await;
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
            if let Err(e) = w.write_all(&data).await {
                tracing::warn!(container = %container_id, exec = %exec_id, error = %e, "{stream:?} reader gone; discarding");
                out = None;
            }
        }
    }
}
