//! `containerd-shim-kata-v2 console SANDBOX-ID [COMMAND...]`: a shell in a
//! running sandbox's VM, outside every container (Kata's `kata-runtime
//! exec`). The guest agent serves it on vsock port
//! [`protocols::DEBUG_CONSOLE_VSOCK_PORT`] only when the sandbox was booted
//! with `[agent.kata] debug_console_enabled = true`; the shim reaches it
//! through the VM's hybrid-vsock socket (`CONNECT 1026`).
//!
//! Without a command the console is interactive (stdin to the shell, its
//! output to stdout). With one, the command runs, its output is printed and
//! its exit status becomes this command's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ops::OpsError;
use crate::persist::{SandboxPaths, RUN_ROOT};

/// How long the hybrid-vsock handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Marks the line that carries a one-shot command's exit status.
const RC_MARKER: &str = "__kata_shim_console_rc=";

/// The hybrid-vsock socket of sandbox `id` under `root`.
pub fn socket_of(root: &Path, id: &str) -> PathBuf {
    SandboxPaths::new(root, id)
        .vm
        .join(hypervisor::helpers::HYBRID_VSOCK_SOCKET)
}

pub fn main(positional: &[String], _config: Option<&Path>) -> Result<i32, OpsError> {
    let Some((id, command)) = positional.split_first() else {
        return Err(OpsError::Usage(
            "usage: containerd-shim-kata-v2 console SANDBOX-ID [COMMAND...]".into(),
        ));
    };
    let socket = socket_of(Path::new(RUN_ROOT), id);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(&socket, id, &command.join(" ")))
}

/// Opens the console of the sandbox whose hybrid-vsock socket is `socket`.
pub async fn connect(socket: &Path, id: &str) -> Result<tokio::net::UnixStream, OpsError> {
    if !tokio::fs::try_exists(socket).await.unwrap_or(false) {
        return Err(OpsError::Usage(format!(
            "sandbox {id:?}: no hybrid-vsock socket at {} (not running on this host, or using kernel vhost-vsock, which the console does not support)",
            socket.display()
        )));
    }
    agent_client::dial::hybrid_connect(socket, protocols::DEBUG_CONSOLE_VSOCK_PORT, CONNECT_TIMEOUT)
        .await
        .map_err(|e| {
            OpsError::Usage(format!(
                "sandbox {id:?}: the debug console is not available ({e}); it needs [agent.kata] debug_console_enabled = true when the sandbox boots"
            ))
        })
}

/// Runs `command` in the console and returns its output (marker line
/// removed) and exit status.
pub async fn run_command(
    socket: &Path,
    id: &str,
    command: &str,
) -> Result<(String, i32), OpsError> {
    let mut stream = connect(socket, id).await?;
    let script = format!("{command}\necho {RC_MARKER}$?\nexit\n");
    stream.write_all(script.as_bytes()).await?;
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out);
    let mut rc = 255;
    let mut kept = String::new();
    for line in text.split_inclusive('\n') {
        match line.trim_end().strip_prefix(RC_MARKER) {
            Some(code) => rc = code.trim().parse().unwrap_or(255),
            None => kept.push_str(line),
        }
    }
    Ok((kept, rc))
}

async fn run(socket: &Path, id: &str, command: &str) -> Result<i32, OpsError> {
    if !command.is_empty() {
        let (out, rc) = run_command(socket, id, command).await?;
        let mut stdout = tokio::io::stdout();
        stdout.write_all(out.as_bytes()).await?;
        stdout.flush().await?;
        return Ok(rc);
    }
    let stream = connect(socket, id).await?;
    eprintln!("connected to the debug console of sandbox {id}; `exit` or Ctrl-D ends it");
    let (mut from_guest, mut to_guest) = stream.into_split();
    let input = async move {
        let mut stdin = tokio::io::stdin();
        let r = tokio::io::copy(&mut stdin, &mut to_guest).await;
        let _ = to_guest.shutdown().await;
        r
    };
    let output = async move {
        let mut stdout = tokio::io::stdout();
        tokio::io::copy(&mut from_guest, &mut stdout).await
    };
    // The session ends when the shell does; stdin may stay open.
    tokio::select! {
        r = output => { r?; }
        r = input => { r?; }
    }
    Ok(0)
}
