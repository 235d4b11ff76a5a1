//! Events to containerd (`/tasks/...` topics) through a small seam so the
//! service can be tested without containerd.
//!
//! The publisher keeps containerd's order: one queue, one sender task, and
//! an event that fails is retried (reconnecting, with backoff) before the
//! next one goes, so a TaskExit never overtakes its TaskStart while
//! containerd is briefly unreachable.

use std::time::Duration;

use async_trait::async_trait;
use protocols::containerd::events::task;
use protocols::containerd::protobuf::well_known_types::any::Any;
use protocols::containerd::protobuf::well_known_types::timestamp::Timestamp;
use protocols::containerd::protobuf::{MessageDyn, MessageField};
use protocols::containerd::shim::event::Envelope;
use protocols::containerd::shim::events::ForwardRequest;
use protocols::containerd::shim_async::EventsClient;
use protocols::containerd::topics;
use protocols::containerd::ttrpc;
use tokio::sync::mpsc;

/// The events the shim publishes, each knowing its topic and protobuf name.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskEvent {
    Create(task::TaskCreate),
    Start(task::TaskStart),
    Delete(task::TaskDelete),
    Exit(task::TaskExit),
    Oom(task::TaskOOM),
    ExecAdded(task::TaskExecAdded),
    ExecStarted(task::TaskExecStarted),
    Paused(task::TaskPaused),
    Resumed(task::TaskResumed),
}

impl TaskEvent {
    /// containerd's topic (`/tasks/...`).
    pub fn topic(&self) -> &'static str {
        match self {
            TaskEvent::Create(_) => topics::TASK_CREATE_EVENT_TOPIC,
            TaskEvent::Start(_) => topics::TASK_START_EVENT_TOPIC,
            TaskEvent::Delete(_) => topics::TASK_DELETE_EVENT_TOPIC,
            TaskEvent::Exit(_) => topics::TASK_EXIT_EVENT_TOPIC,
            TaskEvent::Oom(_) => topics::TASK_OOM_EVENT_TOPIC,
            TaskEvent::ExecAdded(_) => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            TaskEvent::ExecStarted(_) => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            TaskEvent::Paused(_) => topics::TASK_PAUSED_EVENT_TOPIC,
            TaskEvent::Resumed(_) => topics::TASK_RESUMED_EVENT_TOPIC,
        }
    }

    /// The message itself (for text dumps in tests and logs).
    pub fn message(&self) -> &dyn MessageDyn {
        match self {
            TaskEvent::Create(m) => m,
            TaskEvent::Start(m) => m,
            TaskEvent::Delete(m) => m,
            TaskEvent::Exit(m) => m,
            TaskEvent::Oom(m) => m,
            TaskEvent::ExecAdded(m) => m,
            TaskEvent::ExecStarted(m) => m,
            TaskEvent::Paused(m) => m,
            TaskEvent::Resumed(m) => m,
        }
    }

    /// The `Any` payload: type URL (the protobuf full name, written out so
    /// no reflection tables are built: they cost every shim hundreds of KiB
    /// of heap) and bytes.
    fn encode(&self) -> protocols::containerd::protobuf::Result<(&'static str, Vec<u8>)> {
        use protocols::containerd::protobuf::Message;
        Ok(match self {
            TaskEvent::Create(m) => ("containerd.events.TaskCreate", m.write_to_bytes()?),
            TaskEvent::Start(m) => ("containerd.events.TaskStart", m.write_to_bytes()?),
            TaskEvent::Delete(m) => ("containerd.events.TaskDelete", m.write_to_bytes()?),
            TaskEvent::Exit(m) => ("containerd.events.TaskExit", m.write_to_bytes()?),
            TaskEvent::Oom(m) => ("containerd.events.TaskOOM", m.write_to_bytes()?),
            TaskEvent::ExecAdded(m) => ("containerd.events.TaskExecAdded", m.write_to_bytes()?),
            TaskEvent::ExecStarted(m) => ("containerd.events.TaskExecStarted", m.write_to_bytes()?),
            TaskEvent::Paused(m) => ("containerd.events.TaskPaused", m.write_to_bytes()?),
            TaskEvent::Resumed(m) => ("containerd.events.TaskResumed", m.write_to_bytes()?),
        })
    }
}

#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, event: TaskEvent);
}

/// Events waiting for containerd; beyond this, publishing waits.
const QUEUE: usize = 1024;
/// Attempts per event before it is dropped (with a warning).
const ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Bound on one Forward call.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// containerd's event service at `TTRPC_ADDRESS`.
pub struct Containerd {
    queue: mpsc::Sender<Envelope>,
    namespace: String,
}

impl Containerd {
    /// Starts the sender; it connects on the first event (and after errors),
    /// so a containerd that is not listening yet delays events, not the shim.
    pub fn connect(ttrpc_address: &str, namespace: &str) -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(send_loop(url_of(ttrpc_address), rx));
        Self {
            queue,
            namespace: namespace.to_owned(),
        }
    }
}

fn url_of(address: &str) -> String {
    if address.contains("://") {
        address.to_owned()
    } else {
        format!("unix://{address}")
    }
}

/// The envelope containerd expects: the event as an `Any` named by its
/// protobuf full name, with topic, namespace and time.
pub fn envelope(
    event: &TaskEvent,
    namespace: &str,
) -> protocols::containerd::protobuf::Result<Envelope> {
    let (type_url, value) = event.encode()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Ok(Envelope {
        timestamp: MessageField::some(Timestamp {
            seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos() as i32,
            ..Default::default()
        }),
        namespace: namespace.to_owned(),
        topic: event.topic().to_owned(),
        event: MessageField::some(Any {
            type_url: type_url.to_owned(),
            value,
            ..Default::default()
        }),
        ..Default::default()
    })
}

async fn send_loop(url: String, mut rx: mpsc::Receiver<Envelope>) {
    let mut client: Option<EventsClient> = None;
    while let Some(env) = rx.recv().await {
        let req = ForwardRequest {
            envelope: MessageField::some(env),
            ..Default::default()
        };
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            if client.is_none() {
                client = ttrpc::r#async::Client::connect(&url)
                    .await
                    .map(EventsClient::new)
                    .map_err(|e| tracing::debug!(url, error = %e, "connecting to containerd"))
                    .ok();
            }
            let sent = match &client {
                Some(c) => {
                    let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
                    c.forward(ctx, &req).await.map(|_| ())
                }
                None => Err(ttrpc::Error::LocalClosed),
            };
            match sent {
                Ok(()) => break,
                Err(e) if attempt == ATTEMPTS => {
                    tracing::warn!(topic = %topic_of(&req), error = %e, "event dropped: containerd unreachable");
                }
                Err(e) => {
                    tracing::debug!(topic = %topic_of(&req), attempt, error = %e, "event not delivered yet");
                    client = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

fn topic_of(req: &ForwardRequest) -> String {
    req.envelope.topic.clone()
}

#[async_trait]
impl EventSink for Containerd {
    async fn publish(&self, event: TaskEvent) {
        let topic = event.topic();
        match envelope(&event, &self.namespace) {
            Ok(env) => {
                if self.queue.send(env).await.is_err() {
                    tracing::warn!(topic, "event sender gone");
                }
            }
            Err(e) => tracing::warn!(topic, error = %e, "encoding event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use protocols::containerd::api::Empty;
    use protocols::containerd::events::task::{TaskExit, TaskStart};
    use protocols::containerd::shim_async::{create_events, Events};
    use protocols::containerd::ttrpc::r#async::{Server, TtrpcContext};

    use super::*;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<(String, String, String)>>>);

    #[async_trait]
    impl Events for Sink {
        async fn forward(&self, _: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            let e = req.envelope;
            if let Ok(mut v) = self.0.lock() {
                v.push((
                    e.topic.clone(),
                    e.namespace.clone(),
                    e.event.type_url.clone(),
                ));
            }
            Ok(Empty::default())
        }
    }

    async fn serve(path: &std::path::Path, sink: Sink) -> Server {
        let mut server = Server::new()
            .bind(&format!("unix://{}", path.display()))
            .expect("bind")
            .register_service(create_events(Arc::new(sink)));
        server.start().await.expect("start");
        server
    }

    async fn wait_for(sink: &Sink, n: usize) -> Vec<(String, String, String)> {
        for _ in 0..200 {
            let got = sink.0.lock().map(|v| v.clone()).unwrap_or_default();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        sink.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    #[test]
    fn known_events_are_named_and_encoded_as_their_descriptors_say() {
        use protocols::containerd::events::task::*;
        use protocols::containerd::protobuf::{Message, MessageFull};
        let exit = TaskExit {
            container_id: "c1".into(),
            exit_status: 7,
            ..Default::default()
        };
        let events = vec![
            TaskEvent::Create(TaskCreate::new()),
            TaskEvent::Start(TaskStart::new()),
            TaskEvent::Delete(TaskDelete::new()),
            TaskEvent::Exit(exit.clone()),
            TaskEvent::Oom(TaskOOM::new()),
            TaskEvent::ExecAdded(TaskExecAdded::new()),
            TaskEvent::ExecStarted(TaskExecStarted::new()),
            TaskEvent::Paused(TaskPaused::new()),
            TaskEvent::Resumed(TaskResumed::new()),
        ];
        for e in events {
            let env = envelope(&e, "ns").expect("envelope");
            let m = e.message();
            assert_eq!(env.event.type_url, m.descriptor_dyn().full_name());
            assert_eq!(env.topic, e.topic());
            assert!(env.topic.starts_with("/tasks/"), "{}", env.topic);
            let mut want = Vec::new();
            m.write_to_vec_dyn(&mut want).expect("encode");
            assert_eq!(env.event.value, want, "{}", env.event.type_url);
        }
        let env = envelope(&TaskEvent::Exit(exit.clone()), "ns").expect("envelope");
        assert_eq!(
            TaskExit::parse_from_bytes(&env.event.value).expect("decode"),
            exit
        );
        assert_eq!(
            TaskExit::descriptor().full_name(),
            "containerd.events.TaskExit"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_arrive_in_order_even_when_containerd_comes_late() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("containerd.sock.ttrpc");
        let publisher = Containerd::connect(&path.to_string_lossy(), "k8s.io");
        // containerd is not listening yet: the events wait and keep their order.
        publisher
            .publish(TaskEvent::Start(TaskStart::default()))
            .await;
        publisher
            .publish(TaskEvent::Exit(TaskExit::default()))
            .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sink = Sink::default();
        let _server = serve(&path, sink.clone()).await;
        let got = wait_for(&sink, 2).await;
        assert_eq!(
            got,
            vec![
                (
                    "/tasks/start".to_owned(),
                    "k8s.io".to_owned(),
                    "containerd.events.TaskStart".to_owned()
                ),
                (
                    "/tasks/exit".to_owned(),
                    "k8s.io".to_owned(),
                    "containerd.events.TaskExit".to_owned()
                ),
            ]
        );
    }
}
