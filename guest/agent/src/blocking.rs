//! The one way the agent does blocking work from an RPC: mounts, cgroup
//! and sysfs files (CPU/memory onlining), waiting for kernel modules. The
//! RPCs run on a small tokio runtime; a mount of a slow share or a cgroup
//! file held by the kernel must not stall every other RPC meanwhile.

use crate::error::{Error, Result};

/// Runs `f` on tokio's blocking pool and returns its result.
pub async fn run<T, F>(f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn runs_off_the_runtime_and_keeps_the_error() {
        let here = std::thread::current().id();
        let there = run(move || Ok(std::thread::current().id()))
            .await
            .expect("ran");
        assert_ne!(here, there, "ran on the runtime's own thread");
        let e = run(|| -> Result<()> { Err(Error::NotFound("x".into())) })
            .await
            .expect_err("error kept");
        assert!(matches!(e, Error::NotFound(_)), "{e:?}");
    }
}
