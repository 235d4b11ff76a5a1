//! How long a process's exit waits for its output.
//!
//! containerd wants the output before TaskExit (`ctr run` closes its fifo
//! when it hears of the exit), so the exit watcher waits for the copies to
//! reach the end of their streams. But a stream ends only when every process
//! holding its write end is gone, and a process that outlives the one that
//! exited (a daemon's worker, a background child of an exec) would hold the
//! exit back for ever, and with it CRI's StopContainer and StopPodSandbox.
//! runc's shim reports the exit at once and gives the copy 2 s at Delete; we
//! wait while the output still moves, and give up once it has been quiet for
//! [`QUIET`] (or after [`CAP`] in all), leaving the copies running.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::io::Progress;

/// No byte moved for this long after the exit: the stream is held open by a
/// process that writes nothing; report the exit.
pub const QUIET: Duration = Duration::from_secs(3);
/// The longest an exit waits for output that keeps moving.
pub const CAP: Duration = Duration::from_secs(30);

/// How the wait for the output ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// Every stream reached its end.
    Complete,
    /// Nothing moved for the quiet period.
    Quiet,
    /// Output kept moving until the cap.
    Capped,
}

fn moved(progress: &[Progress]) -> u64 {
    progress.iter().map(|p| p.load(Ordering::Relaxed)).sum()
}

/// Waits for the copies in `handles` to end, as long as `progress` moves.
/// Copies still running on return are left to finish on their own.
pub async fn after_exit(
    handles: Vec<JoinHandle<()>>,
    progress: &[Progress],
    quiet: Duration,
    cap: Duration,
) -> Drain {
    let all = async move {
        for h in handles {
            let _ = h.await;
        }
    };
    tokio::pin!(all);
    let deadline = tokio::time::Instant::now() + cap;
    let mut last = moved(progress);
    loop {
        tokio::select! {
            _ = &mut all => return Drain::Complete,
            _ = tokio::time::sleep(quiet) => {
                let now = moved(progress);
                if now == last {
                    return Drain::Quiet;
                }
                if tokio::time::Instant::now() >= deadline {
                    return Drain::Capped;
                }
                last = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Real time (tokio's clock pausing is not enabled here), scaled down.
    const Q: Duration = Duration::from_millis(200);
    const C: Duration = Duration::from_millis(1500);
    const TICK: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn streams_that_end_complete() {
        let h = tokio::spawn(tokio::time::sleep(TICK));
        let got = after_exit(vec![h], &[Progress::default()], Q, C).await;
        assert_eq!(got, Drain::Complete);
    }

    #[tokio::test]
    async fn a_stream_held_open_silently_gives_up_after_the_quiet_period() {
        let held = tokio::spawn(std::future::pending::<()>());
        let t0 = tokio::time::Instant::now();
        let got = after_exit(vec![held], &[Progress::default()], Q, C).await;
        assert_eq!(got, Drain::Quiet);
        assert!(t0.elapsed() >= Q && t0.elapsed() < C, "{:?}", t0.elapsed());
    }

    fn mover(p: &Progress, ticks: Option<u32>) -> JoinHandle<()> {
        let p = p.clone();
        tokio::spawn(async move {
            let mut left = ticks.unwrap_or(u32::MAX);
            while left > 0 {
                tokio::time::sleep(TICK).await;
                p.fetch_add(1, Ordering::Relaxed);
                left -= 1;
            }
        })
    }

    #[tokio::test]
    async fn moving_output_is_waited_for_until_it_ends_or_the_cap() {
        // Moves for longer than the quiet period, then ends: waited for.
        let p = Progress::default();
        let t0 = tokio::time::Instant::now();
        let h = mover(&p, Some(12));
        assert_eq!(after_exit(vec![h], &[p], Q, C).await, Drain::Complete);
        assert!(t0.elapsed() >= TICK * 12);
        // Moves for ever: given up at the cap.
        let p = Progress::default();
        let t0 = tokio::time::Instant::now();
        let h = mover(&p, None);
        assert_eq!(after_exit(vec![h], &[p], Q, C).await, Drain::Capped);
        assert!(
            t0.elapsed() >= C && t0.elapsed() < C + Q * 3,
            "{:?}",
            t0.elapsed()
        );
    }
}
