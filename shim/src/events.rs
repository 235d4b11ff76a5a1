//! Events to containerd (`/tasks/...` topics) through a small seam so the
//! service can be tested without containerd.

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use protocols::containerd::protobuf::MessageDyn;
use protocols::containerd::ttrpc::context::Context;

#[async_trait]
pub trait EventSink: Send + Sync {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

/// containerd's event service at `TTRPC_ADDRESS`; failed sends are retried
/// by the publisher's queue.
pub struct Containerd {
    publisher: RemotePublisher,
    namespace: String,
}

impl Containerd {
    pub async fn connect(ttrpc_address: &str, namespace: &str) -> anyhow::Result<Self> {
        Ok(Self {
            publisher: RemotePublisher::new(ttrpc_address).await?,
            namespace: namespace.to_owned(),
        })
    }
}

#[async_trait]
impl EventSink for Containerd {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "publishing event failed");
        }
    }
}
