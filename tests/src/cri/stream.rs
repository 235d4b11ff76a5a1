//! Exec and attach streaming through containerd's CRI streaming server, as
//! `crictl exec -it` / `crictl attach` use it: CRI `Exec`/`Attach` return a
//! URL on the loopback streaming server; we speak the Kubernetes websocket
//! protocol `v4.channel.k8s.io` to it (one byte of channel id before each
//! binary frame: 0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 resize).

use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const ERROR: u8 = 3;
pub const RESIZE: u8 = 4;

/// Pause between connecting and sending stdin (see [`run`]).
const STDIN_DELAY: Duration = Duration::from_millis(1000);

/// What a finished stream delivered.
#[derive(Debug, Default)]
pub struct Outcome {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The status object sent on the error channel (JSON), if any.
    pub status: String,
}

impl Outcome {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// The exit code the status reports: 0 on `Success`, the `ExitCode`
    /// cause of a `NonZeroExitCode` failure, `None` otherwise.
    pub fn exit_code(&self) -> Option<i32> {
        if self.status.is_empty() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&self.status).ok()?;
        if v["status"] == "Success" {
            return Some(0);
        }
        v["details"]["causes"]
            .as_array()?
            .iter()
            .find(|c| c["reason"] == "ExitCode")
            .and_then(|c| c["message"].as_str())
            .and_then(|m| m.parse().ok())
    }
}

/// Connects to a streaming URL (`http://127.0.0.1:<port>/exec/<token>` or
/// `/attach/<token>`), optionally sends a window size and `stdin`, then
/// collects output until the server closes the stream (or `timeout`).
pub async fn run(
    url: &str,
    resize: Option<(u16, u16)>,
    stdin: &[u8],
    timeout: Duration,
) -> Result<Outcome> {
    session(url, resize, stdin, None, timeout).await
}

/// Like [`run`], but returns (closing the stream) as soon as stdout holds
/// `want`: for a container that keeps running after it answered.
pub async fn run_until(url: &str, stdin: &[u8], want: &str, timeout: Duration) -> Result<Outcome> {
    session(url, None, stdin, Some(want), timeout).await
}

async fn session(
    url: &str,
    resize: Option<(u16, u16)>,
    stdin: &[u8],
    until: Option<&str>,
    timeout: Duration,
) -> Result<Outcome> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("websocket to {ws_url}"))?;
    if let Some((w, h)) = resize {
        let mut msg = vec![RESIZE];
        msg.extend_from_slice(format!("{{\"Width\":{w},\"Height\":{h}}}").as_bytes());
        ws.send(Message::Binary(msg.into())).await?;
    }
    if !stdin.is_empty() {
        // containerd wires an attach's stdin and its output writers
        // concurrently: input sent at once may be answered before the
        // output reaches this stream (it still lands in the CRI log).
        tokio::time::sleep(STDIN_DELAY).await;
        let mut msg = vec![STDIN];
        msg.extend_from_slice(stdin);
        ws.send(Message::Binary(msg.into())).await?;
    }
    let mut out = Outcome::default();
    let collect = async {
        while let Some(msg) = ws.next().await {
            match msg? {
                Message::Binary(b) if !b.is_empty() => match b[0] {
                    STDOUT => {
                        out.stdout.extend_from_slice(&b[1..]);
                        if until.is_some_and(|w| String::from_utf8_lossy(&out.stdout).contains(w)) {
                            break;
                        }
                    }
                    STDERR => out.stderr.extend_from_slice(&b[1..]),
                    ERROR => out.status.push_str(&String::from_utf8_lossy(&b[1..])),
                    _ => {}
                },
                Message::Close(_) => break,
                _ => {}
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(timeout, collect)
        .await
        .with_context(|| format!("stream {url} not finished after {timeout:?}"))??;
    Ok(out)
}
