//! The one way the daemon does blocking work from async code: mounts and
//! their teardown, reading the configuration file. Tokio's workers must not
//! wait on a slow disk or a busy mount table while other RPCs queue behind.

use crate::error::{Error, Result};

/// Runs `f` on tokio's blocking pool and returns its result.
pub async fn run<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::io("blocking task", std::io::Error::other(e)))?
}
