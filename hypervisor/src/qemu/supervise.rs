//! Supervision of a launched VM: one receiver for the first exit among QEMU
//! and its helpers (a guest panic named as such), QEMU's events off the
//! event-only QMP monitor, and the first QMP connection while QEMU starts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::{EVENTS_CONNECT_TIMEOUT, QMP_TIMEOUT};
use crate::console::Ring;
use crate::process::Supervised;
use crate::qmp::Qmp;
use crate::{Error, Result, VmEvent};

/// How long a helper's exit waits for QEMU's before it is reported: when QEMU
/// dies, virtiofsd exits right after it and may be reaped first.
const HELPER_EXIT_GRACE: Duration = Duration::from_millis(100);

/// How long QEMU's exit waits for the event monitor to deliver what QEMU
/// said before dying (it reads to EOF once QEMU is gone).
pub(super) const EVENTS_DRAIN_GRACE: Duration = Duration::from_millis(500);

/// A receiver that turns `Some` with the first exit among QEMU and its helpers,
/// preferring QEMU's when both end together. `panicked` turns `Some(action)`
/// when QEMU reports GUEST_PANICKED (and closes when the event watcher ends):
/// QEMU's exit is then described as the guest's panic.
pub(super) fn watch_any_exit(
    qemu: watch::Receiver<Option<String>>,
    mut panicked: watch::Receiver<Option<String>>,
    helpers: impl Iterator<Item = watch::Receiver<Option<String>>>,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    let tx = Arc::new(tx);
    let publish = |tx: &watch::Sender<Option<String>>, desc: String| {
        tx.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(desc);
                true
            } else {
                false
            }
        });
    };
    {
        let tx = tx.clone();
        let mut w = qemu.clone();
        tokio::spawn(async move {
            let desc = match w.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => return,
            };
            // Ends early when the watcher ends without a panic (channel closed).
            let _ =
                tokio::time::timeout(EVENTS_DRAIN_GRACE, panicked.wait_for(Option::is_some)).await;
            let action = panicked.borrow().clone();
            publish(
                &tx,
                match action {
                    Some(action) => {
                        format!("guest kernel panicked (QEMU action: {action}); {desc}")
                    }
                    None => desc,
                },
            );
        });
    }
    for mut w in helpers {
        let tx = tx.clone();
        let mut q = qemu.clone();
        tokio::spawn(async move {
            let desc = match w.wait_for(Option::is_some).await {
                Ok(v) => v.clone().unwrap_or_default(),
                Err(_) => return,
            };
            if tokio::time::timeout(HELPER_EXIT_GRACE, q.wait_for(Option::is_some))
                .await
                .is_ok()
            {
                // QEMU ended too: its own watcher reports it.
                return;
            }
            publish(&tx, desc);
        });
    }
    rx
}

/// Reads the event-only QMP monitor and broadcasts what QEMU reports, until
/// QEMU goes away. Best effort: a QEMU without the monitor only loses events.
pub(super) async fn watch_events(
    socket: PathBuf,
    qemu_exit: watch::Receiver<Option<String>>,
    tx: broadcast::Sender<VmEvent>,
    panicked: watch::Sender<Option<String>>,
    sandbox: String,
) {
    let deadline = Instant::now() + EVENTS_CONNECT_TIMEOUT;
    let mut qmp = loop {
        if qemu_exit.borrow().is_some() {
            return;
        }
        match Qmp::connect(&socket, QMP_TIMEOUT).await {
            Ok(q) => break q,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!(sandbox, "QMP event monitor unreachable: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    loop {
        match qmp.next_event().await {
            Ok((name, data)) => {
                let event = VmEvent::from_qmp(&name, &data);
                match &event {
                    VmEvent::GuestPanicked { action } => {
                        tracing::error!(sandbox, ?event, "guest kernel panicked");
                        panicked.send_replace(Some(action.clone()));
                    }
                    _ => tracing::info!(sandbox, ?event, "QEMU event"),
                }
                // No subscriber is fine.
                let _ = tx.send(event);
            }
            Err(e) => {
                tracing::debug!(sandbox, "QMP event monitor closed: {e}");
                return;
            }
        }
    }
}

pub(super) async fn connect_qmp(
    socket: &Path,
    qemu: &Supervised,
    deadline: Instant,
    timeout: Duration,
    ring: &Ring,
) -> Result<Qmp> {
    let mut last_err = String::from("socket not created");
    loop {
        if qemu.has_exited() {
            // Let the output readers catch up before reporting.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(Error::ProcessExited {
                what: qemu.wait().await,
                output: ring.tail(),
            });
        }
        if tokio::fs::try_exists(socket).await.unwrap_or(false) {
            match Qmp::connect(socket, QMP_TIMEOUT.min(timeout)).await {
                Ok(q) => return Ok(q),
                Err(e) => last_err = e.to_string(),
            }
        }
        if Instant::now() >= deadline {
            return Err(Error::StartTimeout {
                what: format!("QEMU QMP ({last_err})"),
                timeout,
                console: ring.tail(),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
