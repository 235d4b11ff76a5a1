//! Fakes for the shim's own seams (events, agent dialing, mounting), for
//! the service's unit tests and the RPC-overhead benchmark. The hypervisor
//! and agent fakes live in their crates.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use agent_client::fake::FakeAgent;
use agent_client::{Address, Agent};
use async_trait::async_trait;
use protocols::containerd::protobuf::MessageDyn;
use protocols::containerd::ttrpc::r#async::TtrpcContext;

use crate::error::Result;
use crate::events::EventSink;
use crate::rootfs::{Mounter, RootfsMount};
use crate::sandbox::AgentDialer;

/// Records every event as (topic, text form).
#[derive(Default)]
pub struct RecordingEvents(Mutex<Vec<(String, String)>>);

#[async_trait]
impl EventSink for RecordingEvents {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let text = protocols::protobuf::text_format::print_to_string(event.as_ref());
        self.lock().push((topic.to_owned(), text));
    }
}

impl RecordingEvents {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn topics(&self) -> Vec<String> {
        self.lock().iter().map(|(t, _)| t.clone()).collect()
    }

    /// The text of the newest event on `topic`.
    pub fn last(&self, topic: &str) -> Option<String> {
        self.lock()
            .iter()
            .rev()
            .find(|(t, _)| t == topic)
            .map(|(_, e)| e.clone())
    }
}

/// Hands out clones of one fake agent.
pub struct FakeDialer(pub FakeAgent);

#[async_trait]
impl AgentDialer for FakeDialer {
    async fn dial(
        &self,
        _addr: &Address,
        _timeout: Duration,
        _tail: &(dyn Fn() -> String + Send + Sync),
    ) -> agent_client::Result<Box<dyn Agent>> {
        Ok(Box::new(self.0.clone()))
    }
}

/// Mounts nothing; records what it was asked.
#[derive(Default)]
pub struct RecordingMounter(Mutex<Vec<String>>);

impl RecordingMounter {
    pub fn calls(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, s: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(s);
    }
}

#[async_trait]
impl Mounter for RecordingMounter {
    async fn mount(&self, _m: Vec<RootfsMount>, _bundle: PathBuf, target: PathBuf) -> Result<()> {
        self.push(format!("mount {}", target.display()));
        Ok(())
    }

    async fn unmount(&self, dir: PathBuf) -> Result<()> {
        self.push(format!("unmount {}", dir.display()));
        Ok(())
    }

    async fn bind(&self, source: PathBuf, target: PathBuf) -> Result<()> {
        self.push(format!("bind {} {}", source.display(), target.display()));
        Ok(())
    }
}

/// A ttrpc request context for calling the service directly.
pub fn ttrpc_context() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
        connection_data: Default::default(),
    }
}
