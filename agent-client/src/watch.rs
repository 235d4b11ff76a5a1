//! Background loops over an [`Agent`]: OOM events and health monitoring.
//! Each is a tokio task the caller owns (abort the handle to stop it early).

use std::sync::Arc;
use std::time::Duration;

use protocols::ttrpc::Code;
use tokio::task::JoinHandle;

use crate::{Agent, Error};

/// Pause after a transient GetOOMEvent failure.
const OOM_RETRY: Duration = Duration::from_secs(1);

/// Whether a failed GetOOMEvent is worth retrying: an agent status other than
/// "not there" is; a broken connection or a missing RPC is not.
fn oom_retryable(e: &Error) -> bool {
    match e.code() {
        Some(Code::UNIMPLEMENTED | Code::NOT_FOUND) | None => false,
        Some(_) => true,
    }
}

/// Calls `on_oom(container_id)` for every OOM event the agent reports. Ends
/// when the connection breaks or the agent does not implement GetOOMEvent.
pub fn spawn_oom_watcher(
    agent: Arc<dyn Agent>,
    on_oom: impl Fn(String) + Send + Sync + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match agent.get_oom_event().await {
                Ok(container_id) => {
                    tracing::info!(container = %container_id, "OOM event");
                    on_oom(container_id);
                }
                Err(e) if oom_retryable(&e) => {
                    tracing::debug!("GetOOMEvent failed, retrying: {e}");
                    tokio::time::sleep(OOM_RETRY).await;
                }
                Err(e) => {
                    tracing::debug!("OOM watcher ends: {e}");
                    return;
                }
            }
        }
    })
}

/// Health-checks the agent every `interval`; after `max_failures` consecutive
/// failed checks calls `on_unhealthy(last error)` once and ends.
pub fn spawn_health_monitor(
    agent: Arc<dyn Agent>,
    interval: Duration,
    max_failures: u32,
    on_unhealthy: impl FnOnce(String) + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            tokio::time::sleep(interval).await;
            match agent.check().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(failures, "agent health check failed: {e}");
                    if failures >= max_failures.max(1) {
                        on_unhealthy(e.to_string());
                        return;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::FakeAgent;

    #[tokio::test]
    async fn oom_events_are_forwarded_until_unimplemented() {
        let fake = FakeAgent::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        fake.push_oom("c1");
        fake.push_oom("c2");
        fake.fail_next("GetOOMEvent", Code::INTERNAL, "transient");
        let h = spawn_oom_watcher(Arc::new(fake.clone()), move |c| {
            seen2.lock().expect("lock").push(c);
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            while seen.lock().expect("lock").len() < 2 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("both events");
        // The INTERNAL failure came first and was retried.
        assert_eq!(*seen.lock().expect("lock"), ["c1", "c2"]);
        // The watcher now blocks waiting for the next event; stop it. A watcher
        // whose agent lacks GetOOMEvent ends by itself.
        h.abort();
        fake.fail_next("GetOOMEvent", Code::UNIMPLEMENTED, "no");
        let h = spawn_oom_watcher(Arc::new(fake.clone()), |_| {});
        tokio::time::timeout(Duration::from_secs(1), h)
            .await
            .expect("ends")
            .expect("join");
    }

    #[tokio::test]
    async fn health_monitor_reports_after_consecutive_failures() {
        let fake = FakeAgent::new();
        for _ in 0..3 {
            fake.fail_next("Check", Code::UNAVAILABLE, "down");
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let h = spawn_health_monitor(
            Arc::new(fake.clone()),
            Duration::from_millis(5),
            3,
            move |e| {
                let _ = tx.send(e);
            },
        );
        let reason = tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .expect("reported")
            .expect("sent");
        assert!(reason.contains("down"), "{reason}");
        h.await.expect("monitor ends");
        assert_eq!(fake.methods().len(), 3);
    }
}
