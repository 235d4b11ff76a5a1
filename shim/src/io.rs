//! Copies a process's stdio between containerd's fifos (or log URIs) and
//! the agent's streams.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use agent_client::Agent;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

use crate::process::Process;

/// Largest chunk asked of the agent per ReadStdout/ReadStderr: the agent's
/// own cap (1 MiB), so a busy stream costs few round trips.
const CHUNK: u32 = 1024 * 1024;
/// A reader that takes nothing for this long is abandoned: its output is
/// discarded so a stalled client never holds up Kill, Wait or Delete.
const STALL: Duration = Duration::from_secs(5);
/// Chunks read from the agent but not yet written out. While the fifo takes
/// one chunk the next ReadStdout is already on its way, so the vsock is not
/// idle during our write. Per stream the shim holds at most `AHEAD + 2`
/// chunks (each at most [`CHUNK`]: one being written, `AHEAD` queued, one
/// read and waiting for room), then stops asking: back-pressure.
const AHEAD: usize = 1;
/// How long the end of a stream waits for the fifo's reader to take what
/// the fifo still holds (a 1 MiB fifo takes a reader ~1 ms).
const DRAIN: Duration = Duration::from_secs(2);
/// Buffer of the output fifo (containerd's reader drains it): a 1 MiB fifo
/// takes a whole chunk in one write instead of sixteen 64 KiB wake-ups. The
/// kernel allocates its pages only while they hold data.
const FIFO_SIZE: i32 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where one output stream goes.
pub struct Sink {
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    /// The writer's descriptor when it is a pipe or fifo (owned by `writer`).
    pipe: Option<RawFd>,
}

impl Sink {
    /// A fifo or pipe: before the process is reported exited, the reader is
    /// given time to take what the pipe still holds (see [`Sink::drained`]).
    fn pipe(sender: pipe::Sender) -> Self {
        let pipe = Some(sender.as_raw_fd());
        Sink {
            writer: Box::new(sender),
            pipe,
        }
    }

    /// Any other writer (a file): nothing to wait for.
    pub fn other(writer: impl AsyncWrite + Send + Unpin + 'static) -> Self {
        Sink {
            writer: Box::new(writer),
            pipe: None,
        }
    }

    /// Waits, at most `limit`, until the pipe's reader has taken every byte.
    /// Why: `ctr run` (containerd 1.6) closes its end of the stdout fifo as
    /// soon as it hears of the exit, without reading what is still in it;
    /// with a 1 MiB fifo that lost up to 700 KiB at the end of 1 run in 3
    /// of 256 MiB. A reader that is gone (the pipe reports an error) or
    /// stalled ends the wait.
    /// Takes the sink by value: the descriptor stays open until the end.
    async fn drained(self, limit: Duration) {
        let Some(fd) = self.pipe else { return };
        let t0 = tokio::time::Instant::now();
        let mut pause = Duration::from_micros(200);
        while pipe_holds_data(fd) && t0.elapsed() < limit {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }
}

/// The pipe still holds bytes and someone may read them.
fn pipe_holds_data(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: poll on one live descriptor with a zero timeout (no blocking).
    let polled = unsafe { libc::poll(&mut pfd, 1, 0) };
    if polled < 0 || pfd.revents & (libc::POLLERR | libc::POLLNVAL) != 0 {
        return false; // no reader left
    }
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through a pointer to a live local; on
    // a pipe it counts the bytes buffered, from either end.
    let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    r == 0 && n > 0
}

/// Where a process's stdout and stderr go. A `binary://` URI on stdout
/// starts one logging binary for both streams, as containerd's shims do.
pub async fn open_outputs(
    stdout: &str,
    stderr: &str,
    terminal: bool,
    container_id: &str,
    namespace: &str,
) -> (Option<Sink>, Option<Sink>) {
    if stdout.starts_with("binary://") {
        match spawn_log_binary(stdout, container_id, namespace).await {
            Ok((o, e)) => return (Some(o), (!terminal).then_some(e)),
            Err(e) => {
                tracing::warn!(uri = stdout, error = %e, "logging binary failed; output discarded");
                return (None, None);
            }
        }
    }
    let out = open_sink(stdout).await;
    let err = if terminal {
        None
    } else {
        open_sink(stderr).await
    };
    (out, err)
}

/// Splits `binary:///path?k=v&k2` into the program and its arguments
/// (`k v k2`), containerd's convention.
fn parse_binary_uri(uri: &str) -> std::io::Result<(String, Vec<String>)> {
    let rest = uri.strip_prefix("binary://").unwrap_or(uri);
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(std::io::Error::other(format!(
            "logging binary path {path:?} is not absolute"
        )));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(k.to_owned());
        if !v.is_empty() {
            args.push(v.to_owned());
        }
    }
    Ok((path.to_owned(), args))
}

/// Starts the logging binary with stdout on fd 3, stderr on fd 4 and a
/// readiness pipe on fd 5 that it closes when ready.
async fn spawn_log_binary(
    uri: &str,
    container_id: &str,
    namespace: &str,
) -> std::io::Result<(Sink, Sink)> {
    let (path, args) = parse_binary_uri(uri)?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = tokio::process::Command::new(&path);
    cmd.args(&args)
        .env("CONTAINER_ID", container_id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only dup2, which is async-signal-safe, runs in the child.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop((out_r, err_r, ready_w));
    // Ready when the binary closes fd 5 (EOF on our end).
    let mut ready = pipe::Receiver::from_owned_fd(ready_r)?;
    let mut byte = [0u8; 1];
    if tokio::time::timeout(Duration::from_secs(10), ready.read(&mut byte))
        .await
        .is_err()
    {
        let _ = child.start_kill();
        return Err(std::io::Error::other(
            "logging binary did not get ready within 10 s",
        ));
    }
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let out = pipe::Sender::from_owned_fd(out_w)?;
    let err = pipe::Sender::from_owned_fd(err_w)?;
    Ok((Sink::pipe(out), Sink::pipe(err)))
}

/// Opens where containerd wants the output: a fifo path (or `fifo://`),
/// or a `file://` URI (appended). `None` discards.
async fn open_sink(uri: &str) -> Option<Sink> {
    if uri.is_empty() {
        return None;
    }
    if let Some(path) = uri.strip_prefix("file://") {
        return match tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
        {
            Ok(f) => Some(Sink::other(f)),
            Err(e) => {
                tracing::warn!(path, error = %e, "cannot open log file; output discarded");
                None
            }
        };
    }
    let path = uri.strip_prefix("fifo://").unwrap_or(uri);
    // Read-write, as runc's shim also holds a read end: when containerd
    // (the reader) restarts, writes keep filling the fifo instead of
    // failing with EPIPE, and the new containerd reads on where the old
    // one stopped.
    match pipe::OpenOptions::new().read_write(true).open_sender(path) {
        Ok(s) => {
            grow_pipe(&s, FIFO_SIZE);
            Some(Sink::pipe(s))
        }
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot open output fifo; output discarded");
            None
        }
    }
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Asks the kernel for a `size`-byte pipe buffer; a fifo we cannot grow
/// (limits, not a pipe) still works at its default size.
fn grow_pipe(fd: &impl std::os::fd::AsFd, size: i32) {
    use nix::fcntl::{fcntl, FcntlArg};
    use std::os::fd::AsRawFd;
    if let Err(e) = fcntl(fd.as_fd().as_raw_fd(), FcntlArg::F_SETPIPE_SZ(size)) {
        tracing::debug!(error = %e, "cannot grow the output fifo");
    }
}

/// Copies until the agent reports end of stream. The agent's stream is
/// always drained, even when the reader went away or stalled, so the
/// process in the guest never blocks on a full pipe.
/// Bytes read from the agent so far: lets the exit watcher tell a stream
/// that still moves from one held open by a process that writes nothing.
pub type Progress = Arc<std::sync::atomic::AtomicU64>;

pub async fn copy_out(
    agent: Arc<dyn Agent>,
    (container_id, exec_id): (String, String),
    stream: Stream,
    out: Option<Sink>,
    progress: Progress,
) {
    copy_out_with(agent, (container_id, exec_id), stream, out, STALL, progress).await;
}

async fn copy_out_with(
    agent: Arc<dyn Agent>,
    (container_id, exec_id): (String, String),
    stream: Stream,
    out: Option<Sink>,
    stall: Duration,
    progress: Progress,
) {
    // Reading (RPCs to the agent) and writing (to containerd's fifo) run
    // side by side, joined by a channel that keeps the order of the chunks.
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(AHEAD);
    let ids = (container_id.clone(), exec_id.clone());
    let writer = write_out(out, rx, stream, ids, stall, progress.clone());
    let reader = async move {
        // Where a busy stream's time goes: answers awaited vs room awaited.
        let (mut reads, mut in_rpc, mut in_send) = (0u32, Duration::ZERO, Duration::ZERO);
        let mut empty = 0u32;
        loop {
            let t0 = tokio::time::Instant::now();
            let chunk = match stream {
                Stream::Stdout => agent.read_stdout(&container_id, &exec_id, CHUNK).await,
                Stream::Stderr => agent.read_stderr(&container_id, &exec_id, CHUNK).await,
            };
            reads += 1;
            in_rpc += t0.elapsed();
            let data = match chunk {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(container = %container_id, exec = %exec_id, error = %e, "{stream:?} ended");
                    break;
                }
            };
            if data.is_empty() {
                // No agent of ours answers "nothing, but not the end": a
                // guest that does it in a loop must not spin the shim.
                empty = empty.saturating_add(1);
                tokio::time::sleep(empty_backoff(empty)).await;
                continue;
            }
            empty = 0;
            progress.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            // The writer takes every chunk until the channel closes (it
            // discards them once its reader is gone): never fails early.
            let t0 = tokio::time::Instant::now();
            if tx.send(data).await.is_err() {
                break;
            }
            in_send += t0.elapsed();
        }
        tracing::debug!(container = %container_id, exec = %exec_id, reads, ?in_rpc, ?in_send, "{stream:?} read");
        // Dropping `tx` tells the writer the stream ended.
    };
    tokio::join!(reader, writer);
}

/// Pause after the `n`th empty answer in a row: 1, 2, 4 … ms, at most 100.
fn empty_backoff(n: u32) -> Duration {
    Duration::from_millis((1u64 << n.min(7)).min(100))
}

/// How long a chunk may wait for room once the reader has stalled.
const LOSSY_WAIT: Duration = Duration::from_millis(10);

/// Writes the chunks in order to `out`. A reader that is gone (an error)
/// is given up on; a reader that stalls for `stall` puts the stream in lossy
/// mode, where a chunk that finds no room within [`LOSSY_WAIT`] is
/// discarded, until one is taken whole again (containerd restarted and
/// reads again). The guest's stream is drained either way.
async fn write_out(
    mut out: Option<Sink>,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    stream: Stream,
    (container_id, exec_id): (String, String),
    stall: Duration,
    progress: Progress,
) {
    let (mut written, mut dropped) = (0u64, 0u64);
    let mut lossy = false;
    while let Some(data) = rx.recv().await {
        let Some(w) = out.as_mut().map(|s| &mut s.writer) else {
            dropped += data.len() as u64;
            continue;
        };
        let wait = if lossy { LOSSY_WAIT } else { stall };
        match tokio::time::timeout(wait, w.write_all(&data)).await {
            Ok(Ok(())) => {
                written += data.len() as u64;
                progress.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                if lossy {
                    tracing::info!(container = %container_id, exec = %exec_id, "{stream:?} reader back");
                    lossy = false;
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(container = %container_id, exec = %exec_id, error = %e, "{stream:?} reader gone; discarding");
                out = None;
            }
            Err(_) => {
                if !lossy {
                    tracing::warn!(container = %container_id, exec = %exec_id, "{stream:?} reader stalled; discarding until it reads again");
                }
                lossy = true;
                dropped += data.len() as u64;
            }
        }
    }
    if let Some(mut sink) = out {
        let _ = tokio::time::timeout(stall, sink.writer.flush()).await;
        sink.drained(DRAIN.min(stall)).await;
    }
    tracing::debug!(container = %container_id, exec = %exec_id, written, dropped, "{stream:?} copied");
}

/// What the fifo already holds, read by the syscall itself (the fifo is
/// non-blocking). tokio's `try_read` answers WouldBlock until its reactor
/// has seen the fifo become readable, which need not have happened when
/// CloseIO arrives right after the data: the last line of stdin was lost
/// (5 of 500 `ctr task exec` under load).
fn read_buffered(fifo: &pipe::Receiver, buf: &mut [u8]) -> usize {
    use std::os::fd::AsRawFd;
    nix::unistd::read(fifo.as_raw_fd(), buf).unwrap_or(0)
}

/// Forwards containerd's stdin fifo to the process until EOF or CloseIO,
/// then closes the process's stdin in the guest.
pub async fn copy_in(
    agent: Arc<dyn Agent>,
    container_id: String,
    exec_id: String,
    process: Arc<Process>,
) {
    let path = process
        .stdio
        .stdin
        .strip_prefix("fifo://")
        .unwrap_or(&process.stdio.stdin)
        .to_owned();
    // Read-write: opening never blocks and reads never see a spurious EOF
    // before containerd's writer has connected; CloseIO ends the copy.
    let mut fifo = match pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&path)
    {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(path, error = %e, "cannot open stdin fifo");
            return;
        }
    };
    let mut buf = vec![0u8; 32 * 1024];
    let mut closing = false;
    loop {
        let n = if closing {
            // After CloseIO: forward only what is already buffered.
            read_buffered(&fifo, &mut buf)
        } else {
            tokio::select! {
                r = fifo.read(&mut buf) => r.unwrap_or(0),
                _ = process.stdin_closed.notified() => { closing = true; continue; }
                // The fifo is open read-write, so it never reads EOF: without
                // this, every exec with stdin kept its fifo and this task
                // until the daemon exited.
                _ = process.wait() => return,
            }
        };
        if n == 0 {
            break;
        }
        let mut sent = 0;
        while sent < n {
            match agent
                .write_stdin(&container_id, &exec_id, &buf[sent..n])
                .await
            {
                Ok(w) if w > 0 => sent += w as usize,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(container = %container_id, exec = %exec_id, error = %e, "stdin write failed");
                    return;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(&container_id, &exec_id).await {
        tracing::debug!(container = %container_id, exec = %exec_id, error = %e, "CloseStdin failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd writes the last bytes and sends CloseIO at once: every
    /// byte reaches the guest before its stdin is closed.
    #[tokio::test]
    async fn stdin_written_just_before_close_io_is_not_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("stdin");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let agent = agent_client::fake::FakeAgent::new();
        let process = Arc::new(Process::new(crate::process::Stdio {
            stdin: path.to_string_lossy().into_owned(),
            ..Default::default()
        }));
        // The writer end first (as containerd's copy), with the data in.
        let writer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("open writer");
        std::io::Write::write_all(&mut &writer, b"42\n").expect("write");
        process.stdin_closed.notify_one();
        copy_in(Arc::new(agent.clone()), "c".into(), "e".into(), process).await;
        let sent: Vec<u8> = agent
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                agent_client::fake::Call::WriteStdin { data, .. } => Some(data),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(sent, b"42\n");
        assert_eq!(agent.methods().last(), Some(&"CloseStdin"));
    }

    #[test]
    fn binary_uri_becomes_program_and_arguments() {
        let (p, a) = parse_binary_uri("binary:///usr/bin/logger?-id=abc&--json").expect("parses");
        assert_eq!(p, "/usr/bin/logger");
        assert_eq!(a, vec!["-id", "abc", "--json"]);
        assert!(parse_binary_uri("binary://relative/logger").is_err());
    }

    /// A sink that records what it is given, or never accepts anything.
    struct Recorder {
        got: Arc<std::sync::Mutex<Vec<u8>>>,
        stuck: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            if self.stuck {
                return std::task::Poll::Pending;
            }
            // Short writes, to exercise write_all across chunk boundaries.
            let n = buf.len().min(7);
            self.got
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(&buf[..n]);
            std::task::Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Reads run ahead of the writer: every byte still arrives once, in order.
    #[tokio::test]
    async fn output_arrives_whole_and_in_order() {
        let fake = Arc::new(agent_client::fake::FakeAgent::new());
        let mut want = Vec::new();
        for i in 0..2000u32 {
            let line = format!("{i}\n");
            fake.push_stdout("c1", "", line.as_bytes());
            want.extend_from_slice(line.as_bytes());
        }
        fake.exit_process("c1", "", 0);
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = Recorder {
            got: got.clone(),
            stuck: false,
        };
        copy_out(
            fake,
            ("c1".into(), String::new()),
            Stream::Stdout,
            Some(Sink::other(sink)),
            Progress::default(),
        )
        .await;
        assert_eq!(*got.lock().unwrap_or_else(|p| p.into_inner()), want);
    }

    /// A reader that never reads is given up on; the stream is still drained
    /// to its end, so the process is never blocked on its output.
    #[tokio::test]
    async fn a_stalled_reader_does_not_stop_the_drain() {
        let fake = Arc::new(agent_client::fake::FakeAgent::new());
        for _ in 0..10 {
            fake.push_stdout("c1", "", &[b'x'; 1000]);
        }
        fake.exit_process("c1", "", 0);
        let sink = Recorder {
            got: Arc::default(),
            stuck: true,
        };
        let agent: Arc<dyn Agent> = fake.clone();
        tokio::time::timeout(
            Duration::from_secs(5),
            copy_out_with(
                agent,
                ("c1".into(), String::new()),
                Stream::Stdout,
                Some(Sink::other(sink)),
                Duration::from_millis(100),
                Progress::default(),
            ),
        )
        .await
        .expect("copy_out ends although nobody reads");
        let reads = fake
            .methods()
            .iter()
            .filter(|m| **m == "ReadStdout")
            .count();
        assert_eq!(reads, 11, "10 chunks and the end of stream");
    }

    /// The end of a stream waits until the fifo's reader took everything:
    /// a client that stops reading when it hears of the exit loses nothing.
    #[tokio::test]
    async fn the_exit_waits_for_the_fifo_reader() {
        use std::io::Read;
        let fake = Arc::new(agent_client::fake::FakeAgent::new());
        for _ in 0..6 {
            fake.push_stdout("c1", "", &[b'x'; 10_000]); // fits in a 64 KiB pipe
        }
        fake.exit_process("c1", "", 0);
        let (r, w) = pipe().expect("pipe");
        let sink = Sink::pipe(pipe::Sender::from_owned_fd(w).expect("sender"));
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut all = Vec::new();
            std::fs::File::from(r).read_to_end(&mut all).expect("read");
            all.len()
        });
        let t0 = std::time::Instant::now();
        let ids = ("c1".into(), String::new());
        copy_out(fake, ids, Stream::Stdout, Some(sink), Progress::default()).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "copy_out returned after {:?}, before the reader took the fifo's bytes",
            t0.elapsed()
        );
        assert_eq!(reader.join().expect("reader"), 60_000);
    }

    /// containerd restarts while the container writes: its fifo reader goes
    /// away and comes back. The shim's held read end keeps the fifo alive,
    /// and output written after the new reader connects reaches it.
    #[tokio::test]
    async fn output_reaches_a_reader_that_reconnects() {
        use std::io::Read;
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("stdout");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let fake = Arc::new(agent_client::fake::FakeAgent::new());
        fake.push_stdout("c1", "", b"first\n");
        let sink = open_sink(&fifo.to_string_lossy()).await.expect("sink");
        let mut first = std::fs::File::open(&fifo).expect("reader 1");
        let agent: Arc<dyn Agent> = fake.clone();
        let copy = tokio::spawn(copy_out_with(
            agent,
            ("c1".into(), String::new()),
            Stream::Stdout,
            Some(sink),
            Duration::from_millis(100),
            Progress::default(),
        ));
        let mut buf = [0u8; 6];
        tokio::task::spawn_blocking(move || first.read_exact(&mut buf).map(|()| buf))
            .await
            .expect("join")
            .expect("first line");
        // containerd is gone (reader 1 closed) while 3 MiB are written.
        for _ in 0..3 {
            fake.push_stdout("c1", "", &vec![b'x'; 1 << 20]);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        let path = fifo.clone();
        let second = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            std::fs::File::open(&path)
                .and_then(|mut f| f.read_to_end(&mut all))
                .map(|_| all)
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        fake.push_stdout("c1", "", b"tail\n");
        fake.exit_process("c1", "", 0);
        tokio::time::timeout(Duration::from_secs(10), copy)
            .await
            .expect("copy ends")
            .expect("join");
        let got = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("reader 2 got an end of file")
            .expect("join")
            .expect("reader 2");
        assert!(
            got.ends_with(b"tail\n"),
            "{} bytes, tail missing",
            got.len()
        );
    }

    #[test]
    fn a_pipe_holds_data_only_while_it_has_bytes_and_a_reader() {
        use std::io::Write;
        let (r, w) = pipe().expect("pipe");
        let fd = w.as_raw_fd();
        assert!(!pipe_holds_data(fd), "empty");
        std::fs::File::from(w.try_clone().expect("dup"))
            .write_all(b"abc")
            .expect("write");
        assert!(pipe_holds_data(fd), "3 bytes, reader open");
        drop(r);
        assert!(!pipe_holds_data(fd), "nobody left to read them");
    }

    #[tokio::test]
    async fn logging_binary_gets_both_streams() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = dir.path().join("logger.sh");
        let log = dir.path().join("out.log");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nexec 5>&-\ncat <&3 >> {0} & cat <&4 >> {0}; wait\n",
                log.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let uri = format!("binary://{}", script.display());
        let (out, err) = open_outputs(&uri, "", false, "c1", "ns").await;
        let (mut out, mut err) = (out.expect("stdout sink"), err.expect("stderr sink"));
        out.writer.write_all(b"to stdout\n").await.expect("write");
        err.writer.write_all(b"to stderr\n").await.expect("write");
        drop((out, err));
        let mut text = String::new();
        for _ in 0..50 {
            text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.lines().count() == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            text.contains("to stdout") && text.contains("to stderr"),
            "{text:?}"
        );
    }
}
