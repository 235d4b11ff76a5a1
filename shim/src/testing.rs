//! Fakes for the shim's own seams (events, agent dialing, mounting), for
//! the service's unit tests and the RPC-overhead benchmark. The hypervisor
//! and agent fakes live in their crates.

use std::sync::Mutex;
use std::time::Duration;

use agent_client::fake::FakeAgent;
use agent_client::{Address, Agent};
use async_trait::async_trait;
use protocols::containerd::ttrpc::r#async::TtrpcContext;

use crate::error::Result;
use crate::events::{EventSink, TaskEvent};
use crate::persist::SandboxPaths;
use crate::sandbox::AgentDialer;
use crate::share::{ContainerMounts, Mounter};

/// Records every event as (topic, text form).
#[derive(Default)]
pub struct RecordingEvents(Mutex<Vec<(String, String)>>);

#[async_trait]
impl EventSink for RecordingEvents {
    async fn publish(&self, event: TaskEvent) {
        let text = protocols::protobuf::text_format::print_to_string(event.message());
        self.lock().push((event.topic().to_owned(), text));
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

/// Creates and removes the sandbox's directories like the real mounter
/// (no root needed), mounts nothing.
#[async_trait]
impl Mounter for RecordingMounter {
    async fn prepare(&self, paths: &SandboxPaths) -> Result<()> {
        self.push(format!("prepare {}", paths.base.display()));
        for d in [&paths.vm, &paths.mounts(), &paths.shared] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| crate::error::Error::io("creating", e))?;
        }
        Ok(())
    }

    async fn mount_container(&self, _paths: &SandboxPaths, m: ContainerMounts) -> Result<()> {
        self.push(format!("mount {}", m.cid));
        for b in m.binds {
            self.push(format!("bind {} {}", b.source.display(), b.share_path));
        }
        Ok(())
    }

    async fn unmount_container(&self, _paths: &SandboxPaths, cid: &str) -> Result<()> {
        self.push(format!("unmount {cid}"));
        Ok(())
    }

    async fn teardown(&self, paths: &SandboxPaths) -> Result<()> {
        self.push(format!("teardown {}", paths.base.display()));
        match tokio::fs::remove_dir_all(&paths.base).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(crate::error::Error::io("removing", e)),
        }
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
