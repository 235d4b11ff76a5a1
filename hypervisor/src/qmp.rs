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
        /// The event's `data` member (`null` when absent).
        data: Value,
    },
}

fn unexpected(got: &str) -> Error {
    Error::QmpProtocol(format!("expected QMP greeting, got {got}"))
}

/// Parses one QMP line.
pub fn parse_message(line: &str) -> Result<Message> {
    let v: Value = serde_json::from_str(line)
        .map_err(|e| Error::QmpProtocol(format!("invalid JSON from QEMU ({e}): {line:.200}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::QmpProtocol(format!("QMP message is not an object: {line:.200}")))?;
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
            data: obj.get("data").cloned().unwrap_or(Value::Null),
        })
    } else {
        Err(Error::QmpProtocol(format!(
            "unknown QMP message: {line:.200}"
        )))
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
    /// Events read while waiting for replies, not yet taken by [`Qmp::next_event`].
    pending: std::collections::VecDeque<(String, Value)>,
}

impl Qmp {
    /// Connects to `path`, reads the greeting and negotiates capabilities.
    /// Every exchange is bounded by `timeout`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("connecting QMP socket {}", path.display()),
                timeout,
            })?
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
            pending: std::collections::VecDeque::new(),
        };
        match qmp.read_message().await? {
            Message::Greeting => {}
            Message::Return { .. } => return Err(unexpected("a return value")),
            Message::Error { class, .. } => return Err(unexpected(&format!("error {class}"))),
            Message::Event { name, .. } => return Err(unexpected(&format!("event {name}"))),
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    async fn read_message(&mut self) -> Result<Message> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read_message_untimed())
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for QEMU's QMP answer".into(),
                timeout,
            })?
    }

    async fn read_message_untimed(&mut self) -> Result<Message> {
        let mut line = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut line)
            .await
            .map_err(|e| Error::Io {
                what: "reading QMP socket".into(),
                source: e,
            })?;
        if n == 0 {
            return Err(Error::QmpClosed);
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
        let mut bytes = serde_json::to_vec(&req)
            .map_err(|e| Error::QmpProtocol(format!("encoding {command}: {e}")))?;
        bytes.push(b'\n');
        tokio::time::timeout(self.timeout, self.writer.write_all(&bytes))
            .await
            .map_err(|_| Error::Timeout {
                what: format!("sending QMP {command}"),
                timeout: self.timeout,
            })?
            .map_err(|e| Error::Io {
                what: format!("sending QMP {command}"),
                source: e,
            })?;
        loop {
            match self.read_message().await? {
                Message::Event { name, data } => {
                    tracing::debug!(event = %name, "QMP event");
                    if self.events.len() >= MAX_EVENTS {
                        self.events.remove(0);
                    }
                    self.events.push(name.clone());
                    if self.pending.len() >= MAX_EVENTS {
                        self.pending.pop_front();
                    }
                    self.pending.push_back((name, data));
                }
                Message::Return { id: rid, value } if matches_id(&rid, id) => return Ok(value),
                Message::Error {
                    id: rid,
                    class,
                    desc,
                } if matches_id(&rid, id) => {
                    return Err(Error::Qmp {
                        command: command.to_string(),
                        class,
                        desc,
                    })
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
            Err(Error::QmpClosed) => Ok(()),
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

    /// Waits (without a time limit) for the next asynchronous event: for a
    /// session that only listens. Replies are skipped.
    pub async fn next_event(&mut self) -> Result<(String, Value)> {
        if let Some(ev) = self.pending.pop_front() {
            return Ok(ev);
        }
        loop {
            if let Message::Event { name, data } = self.read_message_untimed().await? {
                return Ok((name, data));
            }
        }
    }

    /// `device_add`: `driver`, `id` and the device's properties.
    pub async fn device_add(&mut self, driver: &str, id: &str, props: Value) -> Result<()> {
        let mut args = json!({ "driver": driver, "id": id });
        merge(&mut args, props);
        self.execute("device_add", Some(args)).await.map(drop)
    }

    /// `netdev_add` of a tap backend opened by name (QEMU runs in the tap's
    /// network namespace).
    pub async fn netdev_add_tap(&mut self, id: &str, ifname: &str) -> Result<()> {
        let args = json!({
            "type": "tap",
            "id": id,
            "ifname": ifname,
            "script": "no",
            "downscript": "no",
            "vhost": false,
        });
        self.execute("netdev_add", Some(args)).await.map(drop)
    }

    /// `netdev_del`.
    pub async fn netdev_del(&mut self, id: &str) -> Result<()> {
        self.execute("netdev_del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `device_del`: starts removing a device; completion is the
    /// `DEVICE_DELETED` event (for vCPUs and DIMMs only once the guest let go).
    pub async fn device_del(&mut self, id: &str) -> Result<()> {
        self.execute("device_del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `object-add` of a `qom_type` object with its properties.
    pub async fn object_add(&mut self, qom_type: &str, id: &str, props: Value) -> Result<()> {
        let mut args = json!({ "qom-type": qom_type, "id": id });
        merge(&mut args, props);
        self.execute("object-add", Some(args)).await.map(drop)
    }

    pub async fn object_del(&mut self, id: &str) -> Result<()> {
        self.execute("object-del", Some(json!({ "id": id })))
            .await
            .map(drop)
    }

    /// `query-cpus-fast`: the VM's vCPUs.
    pub async fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfo>> {
        let v = self.execute("query-cpus-fast", None).await?;
        Ok(parse_cpus_fast(&v))
    }

    /// `query-hotpluggable-cpus`: every vCPU slot, plugged or not.
    pub async fn query_hotpluggable_cpus(&mut self) -> Result<Vec<CpuSlot>> {
        let v = self.execute("query-hotpluggable-cpus", None).await?;
        Ok(parse_hotpluggable_cpus(&v))
    }

    /// Bytes of RAM: (at boot, hot-plugged).
    pub async fn query_memory_size_summary(&mut self) -> Result<(u64, u64)> {
        let v = self.execute("query-memory-size-summary", None).await?;
        let get = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        Ok((get("base-memory"), get("plugged-memory")))
    }
}

fn merge(into: &mut Value, props: Value) {
    if let (Some(dst), Value::Object(src)) = (into.as_object_mut(), props) {
        dst.extend(src);
    }
}

/// One vCPU from `query-cpus-fast`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    pub cpu_index: u64,
    /// Host thread running it.
    pub thread_id: u64,
    pub qom_path: String,
}

pub fn parse_cpus_fast(v: &Value) -> Vec<CpuInfo> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| CpuInfo {
            cpu_index: c.get("cpu-index").and_then(Value::as_u64).unwrap_or(0),
            thread_id: c.get("thread-id").and_then(Value::as_u64).unwrap_or(0),
            qom_path: c
                .get("qom-path")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        })
        .collect()
}

/// One vCPU slot from `query-hotpluggable-cpus`.
#[derive(Debug, Clone, PartialEq)]
pub struct CpuSlot {
    /// The device type to `device_add` (e.g. `max-x86_64-cpu`).
    pub driver: String,
    /// socket-id / core-id / thread-id (...) to pass to `device_add`.
    pub props: Value,
    /// Set when the slot is plugged.
    pub qom_path: Option<String>,
}

pub fn parse_hotpluggable_cpus(v: &Value) -> Vec<CpuSlot> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|c| CpuSlot {
            driver: c
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            props: c.get("props").cloned().unwrap_or(Value::Null),
            qom_path: c.get("qom-path").and_then(Value::as_str).map(String::from),
        })
        .collect()
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
                name: "STOP".into(),
                data: Value::Null
            }
        );
        assert_eq!(
            parse_message(
                r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}}"#
            )
            .expect("ev"),
            Message::Event {
                name: "SHUTDOWN".into(),
                data: json!({"guest": true, "reason": "guest-shutdown"})
            }
        );
        for bad in ["not json", "[1,2]", r#"{"foo": 1}"#] {
            let e = parse_message(bad).expect_err(bad);
            assert!(matches!(e, Error::QmpProtocol(_)), "{bad}: {e:?}");
        }
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
                "device_add" | "object-add" | "device_del" => {
                    // Echo the arguments back as an event, so the test sees what was sent.
                    let ev = json!({"event": "ECHO", "data": req["arguments"].clone()});
                    w.write_all(format!("{ev}\n").as_bytes())
                        .await
                        .expect("event");
                    json!({"return": {}, "id": id})
                }
                "query-cpus-fast" => json!({"return": [
                    {"cpu-index": 0, "thread-id": 100, "qom-path": "/machine/unattached/device[0]"},
                    {"cpu-index": 1, "thread-id": 101, "qom-path": "/machine/peripheral/cpu-1-0-0"}
                ], "id": id}),
                "query-hotpluggable-cpus" => json!({"return": [
                    {"type": "max-x86_64-cpu", "vcpus-count": 1,
                     "props": {"socket-id": 1, "core-id": 0, "thread-id": 0}},
                    {"type": "max-x86_64-cpu", "vcpus-count": 1, "qom-path": "/machine/unattached/device[0]",
                     "props": {"socket-id": 0, "core-id": 0, "thread-id": 0}}
                ], "id": id}),
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
        let cpus = qmp.query_cpus_fast().await.expect("cpus");
        assert_eq!(cpus.len(), 2);
        assert_eq!(cpus[1].thread_id, 101);
        let slots = qmp.query_hotpluggable_cpus().await.expect("slots");
        assert_eq!(slots[0].driver, "max-x86_64-cpu");
        assert!(slots[0].qom_path.is_none() && slots[1].qom_path.is_some());
        qmp.device_add("pc-dimm", "dimm0", json!({"memdev": "dimm-mem0"}))
            .await
            .expect("device_add");
        qmp.object_add(
            "memory-backend-memfd",
            "dimm-mem0",
            json!({"size": 134217728u64, "share": true}),
        )
        .await
        .expect("object-add");
        qmp.device_del("dimm0").await.expect("device_del");
        let (_, data) = loop {
            let (name, data) = qmp.next_event().await.expect("the echo of device_add");
            if name == "ECHO" {
                break (name, data);
            }
        };
        assert_eq!(
            data,
            json!({"driver": "pc-dimm", "id": "dimm0", "memdev": "dimm-mem0"})
        );
        let e = qmp.execute("bogus", None).await.expect_err("bogus fails");
        assert!(
            matches!(&e, Error::Qmp { command, class, .. } if command == "bogus" && class == "CommandNotFound"),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with("QMP bogus: CommandNotFound: "),
            "{e}"
        );
        qmp.quit().await.expect("quit tolerates close");
        srv.await.expect("server");
    }

    #[tokio::test]
    async fn silent_qemu_times_out() {
        let (client, _server) = UnixStream::pair().expect("pair");
        let e = Qmp::handshake(client, Duration::from_millis(100))
            .await
            .expect_err("timeout");
        assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "waiting for QEMU's QMP answer timed out after 100ms"
        );
    }
}
