//! Port-forward through containerd's CRI streaming server, as `kubectl
//! port-forward` (over websockets) uses it: CRI `PortForward` returns a URL
//! on the loopback streaming server; we speak Kubernetes' websocket
//! port-forward protocol to it (`v4.channel.k8s.io`, binary): per requested
//! port a data channel (2·i) and an error channel (2·i+1), each message led
//! by its channel byte, and the server's first message on each channel
//! carries the port as a little-endian u16 (not part of the data).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const DATA: u8 = 0;
const ERROR: u8 = 1;
/// Size of the data messages the client sends.
const CHUNK: usize = 32 * 1024;

/// What one forwarded connection delivered.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Data from the pod's port (the port prefix removed).
    pub data: Vec<u8>,
    /// Text on the error channel (the port prefix removed).
    pub error: String,
}

/// Sends `send` to `port` through the port-forward at `url` while reading
/// what comes back; returns once `expect_back` bytes came back (then closes),
/// or the server closed the stream, or `timeout` passed (an error).
pub async fn exchange(
    url: &str,
    port: u16,
    send: &[u8],
    expect_back: usize,
    timeout: Duration,
) -> Result<Outcome> {
    let ws_url = url.replacen("http://", "ws://", 1);
    let mut req = ws_url.as_str().into_client_request()?;
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "v4.channel.k8s.io".parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .with_context(|| format!("websocket to {ws_url}"))?;
    let (mut tx, mut rx) = ws.split();
    let writer = async {
        for chunk in send.chunks(CHUNK) {
            let mut msg = Vec::with_capacity(chunk.len() + 1);
            msg.push(DATA);
            msg.extend_from_slice(chunk);
            tx.send(Message::Binary(msg.into())).await?;
        }
        Ok::<_, anyhow::Error>(tx)
    };
    let reader = async {
        let mut out = Outcome::default();
        let mut prefix_seen = [false; 2];
        while out.data.len() < expect_back || expect_back == 0 {
            let Some(msg) = rx.next().await else { break };
            let b = match msg? {
                Message::Binary(b) if !b.is_empty() => b,
                Message::Close(_) => break,
                _ => continue,
            };
            let (chan, mut body) = (b[0], &b[1..]);
            if chan > ERROR {
                bail!("message on unexpected channel {chan}");
            }
            let seen = &mut prefix_seen[usize::from(chan)];
            if !*seen {
                if body.len() < 2 || u16::from_le_bytes([body[0], body[1]]) != port {
                    bail!("channel {chan} does not start with port {port}: {body:?}");
                }
                *seen = true;
                body = &body[2..];
            }
            match chan {
                DATA => out.data.extend_from_slice(body),
                _ => out.error.push_str(&String::from_utf8_lossy(body)),
            }
        }
        Ok::<_, anyhow::Error>(out)
    };
    let both = async {
        let (w, r) = tokio::join!(writer, reader);
        let mut tx = w?;
        let _ = tx.close().await;
        r
    };
    tokio::time::timeout(timeout, both)
        .await
        .with_context(|| format!("port-forward {url} not done after {timeout:?}"))?
}

/// Deterministic test bytes for connection `seed` (a xorshift stream).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// FNV-1a 64 of `data`, to name a payload in messages.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}
