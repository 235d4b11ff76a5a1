//! A small async QMP client: line-delimited JSON over a unix socket.
//! Commands are answered in order; asynchronous events in between are recorded.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use crate::{Error, Result};

/// Most events kept in memory.
const MAX_EVENTS: usize = 64;
/// Longest line accepted from QEMU.
const MAX_LINE: usize = 1 << 20;

/// One message from QEMU.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Greeting,
    Return {
        id: Option<Value>,
        value: Value,
    },
    Error {
        id: Option<Value>,
        class: String,
        desc: String,
    },
    Event {
        name: String,
    },
}

/// Parses one QMP line.
pub fn parse_message(line: &str) -> Result<Message> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| Error::Qmp(format!("invalid JSON from QEMU ({e}): {line:.200}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::Qmp(format!("QMP message is not an object: {line:.200}")))?;
    let id = obj.get("id").cloned();
    if obj.contains_key("QMP") {
        Ok(Message::Greeting)
    } else if let Some(value) = obj.get("return") {
        Ok(Message::Return {
            id,
            value: value.clone(),
        })
    } else if let Some(err) = obj.get("error") {
        let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        Ok(Message::Error {
            id,
            class: field("class"),
            desc: field("desc"),
        })
    } else if let Some(name) = obj.get("event").and_then(Value::as_str) {
        Ok(Message::Event {
            name: name.to_string(),
        })
    } else {
        Err(Error::Qmp(format!("unknown QMP message: {line:.200}")))
    }
}

/// The VM's run state as reported by `query-status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub running: bool,
    /// e.g. `running`, `paused`, `shutdown`, `prelaunch`.
    pub status: String,
}

/// A connected, capabilities-negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    next_id: u64,
    events: Vec<String>,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    /// Every exchange is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| Error::Qmp(format!("connecting {} timed out", path.display())))?
            .map_err(|e| Error::Io {
                what: format!("connecting QMP socket {}", path.display()),
                source: e,
            })?;
        Self::handshake(stream, timeout).await
    }

    /// Greeting + `qmp_capabilities` over an already connected stream.
    pub async fn handshake(stream: UnixStream, timeout: Duration) -> Result<Self> {
        let (r, w) = stream.into_split();
        let mut qmp = Qmp {
            reader: BufReader::new(r),
            writer: w,
            timeout,
            next_id: 1,
            events: Vec::new(),
        };
        match qmp.read_message().await? {
            Message::Greeting => {}
            other => return Err(Error::Qmp(format!("expected QMP greeting, got {other:?}"))),
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Message> {
        let mut line = String::new();
        let n = tokio::time::timeout(
            self.timeout,
            (&mut self.reader)
                .take(MAX_LINE as u64)
                .read_line(&mut line),
        )
        .await
        .map_err(|_| Error::Qmp(format!("no answer from QEMU within {:?}", self.timeout)))?
        .map_err(|e| Error::Io {
            what: "reading QMP socket".into(),
            source: e,
        })?;
        if n == 0 {
            return Err(Error::Qmp("QMP connection closed by QEMU".into()));
        }
        parse_message(line.trim_end())
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut req = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            req["arguments"] = args;
        }
        let mut bytes = serde_json::to_vec(&req).map_err(|e| Error::Qmp(e.to_string()))?;
        bytes.push(b'\n');
        tokio::time::timeout(self.timeout, self.writer.write_all(&bytes))
            .await
            .map_err(|_| Error::Qmp(format!("sending {command} timed out")))?
            .map_err(|e| Error::Io {
                what: format!("sending QMP {command}"),
                source: e,
            })?;
        loop {
            match self.read_message().await? {
                Message::Event { name } => {
                    tracing::debug!(event = %name, "QMP event");
                    if self.events.len() >= MAX_EVENTS {
                        self.events.remove(0);
                    }
                    self.events.push(name);
                }
                Message::Return { id: rid, value } if matches_id(&rid, id) => return Ok(value),
                Message::Error {
                    id: rid,
                    class,
                    desc,
                } if matches_id(&rid, id) => {
                    return Err(Error::Qmp(format!("{command}: {class}: {desc}")))
                }
                other => tracing::debug!(?other, "QMP: skipping unrelated message"),
            }
        }
    }

    pub async fn query_status(&mut self) -> Result<Status> {
        let v = self.execute("query-status", None).await?;
        Ok(Status {
            running: v.get("running").and_then(Value::as_bool).unwrap_or(false),
            status: v
                .get("status")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_string(),
        })
    }

    /// Pauses every vCPU.
    pub async fn stop(&mut self) -> Result<()> {
        self.execute("stop", None).await.map(drop)
    }

    /// Resumes the vCPUs.
    pub async fn cont(&mut self) -> Result<()> {
        self.execute("cont", None).await.map(drop)
    }

    /// Asks QEMU to exit. A connection closed before the answer counts as success.
    pub async fn quit(&mut self) -> Result<()> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(Error::Qmp(m)) if m.contains("closed by QEMU") => Ok(()),
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Names of the events seen so far (most recent last).
    pub fn events(&self) -> &[String] {
        &self.events
    }
}

fn matches_id(got: &Option<Value>, want: u64) -> bool {
    match got {
        Some(v) => v.as_u64() == Some(want),
        // QEMU echoes ids; a reply without one can only be ours (one command at a time).
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[test]
    fn parses_messages() {
        assert_eq!(
            parse_message(r#"{"QMP": {"version": {}, "capabilities": []}}"#).expect("greeting"),
            Message::Greeting
        );
        assert_eq!(
            parse_message(r#"{"return": {"status": "running", "running": true}, "id": 3}"#)
                .expect("ret"),
            Message::Return {
                id: Some(json!(3)),
                value: json!({"status": "running", "running": true})
            }
        );
        assert_eq!(
            parse_message(r#"{"error": {"class": "GenericError", "desc": "nope"}}"#).expect("err"),
            Message::Error {
                id: None,
                class: "GenericError".into(),
                desc: "nope".into()
            }
        );
        assert_eq!(
            parse_message(r#"{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 2}}"#)
                .expect("ev"),
            Message::Event {
                name: "STOP".into()
            }
        );
        assert!(parse_message("not json").is_err());
        assert!(parse_message("[1,2]").is_err());
        assert!(parse_message(r#"{"foo": 1}"#).is_err());
    }

    /// Arbitrary input (random bytes, mutated valid messages) never panics the parser.
    #[test]
    fn parser_survives_garbage() {
        let seeds = [
            r#"{"QMP": {"version": {}, "capabilities": []}}"#,
            r#"{"return": {"status": "running", "running": true}, "id": 3}"#,
            r#"{"error": {"class": "GenericError", "desc": "nope"}, "id": "x"}"#,
            r#"{"event": "STOP", "timestamp": {"seconds": 1}}"#,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u64 {
            let mut bytes = seeds[(i % 4) as usize].as_bytes().to_vec();
            for _ in 0..(next() % 4) {
                let pos = (next() as usize) % bytes.len();
                bytes[pos] = (next() & 0xff) as u8;
            }
            if i % 5 == 0 {
                bytes = (0..(next() % 64)).map(|_| (next() & 0xff) as u8).collect();
            }
            let _ = parse_message(&String::from_utf8_lossy(&bytes));
        }
    }

    /// A scripted QEMU: answers each command by name.
    async fn fake_qemu(mut server: UnixStream) {
        let (r, mut w) = server.split();
        let mut lines = BufReader::new(r).lines();
        w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
            .await
            .expect("greet");
        while let Ok(Some(line)) = lines.next_line().await {
            let req: Value = serde_json::from_str(&line).expect("json request");
            let id = req["id"].clone();
            let reply = match req["execute"].as_str().expect("execute") {
                "qmp_capabilities" | "stop" | "cont" => json!({"return": {}, "id": id}),
                "query-status" => {
                    w.write_all(b"{\"event\": \"RESUME\", \"timestamp\": {}}\n")
                        .await
                        .expect("event");
                    json!({"return": {"status": "running", "running": true}, "id": id})
                }
                "quit" => return,
                _ => json!({"error": {"class": "CommandNotFound", "desc": "no"}, "id": id}),
            };
            w.write_all(format!("{reply}\n").as_bytes())
                .await
                .expect("reply");
        }
    }

    #[tokio::test]
    async fn session_against_fake_qemu() {
        let (client, server) = UnixStream::pair().expect("pair");
        let srv = tokio::spawn(fake_qemu(server));
        let mut qmp = Qmp::handshake(client, Duration::from_secs(2))
            .await
            .expect("handshake");
        let st = qmp.query_status().await.expect("status");
        assert!(st.running);
        assert_eq!(st.status, "running");
        assert_eq!(qmp.events(), ["RESUME".to_string()]);
        qmp.stop().await.expect("stop");
        qmp.cont().await.expect("cont");
        let e = qmp.execute("bogus", None).await.expect_err("bogus fails");
        assert!(e.to_string().contains("CommandNotFound"), "{e}");
        qmp.quit().await.expect("quit tolerates close");
        srv.await.expect("server");
    }

    #[tokio::test]
    async fn silent_qemu_times_out() {
        let (client, _server) = UnixStream::pair().expect("pair");
        let e = Qmp::handshake(client, Duration::from_millis(100))
            .await
            .expect_err("timeout");
        assert!(e.to_string().contains("no answer"), "{e}");
    }
}
