//! Output of QEMU and its helpers: read line by line by a tokio task, logged
//! with tracing and kept in a bounded ring for error messages.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;

/// Lines kept per ring.
pub const RING_LINES: usize = 50;
/// A longer line is cut into pieces of this many bytes.
const MAX_LINE: usize = 4096;

/// The last lines of some output; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Ring {
    lines: Arc<Mutex<VecDeque<String>>>,
}

impl Ring {
    pub fn push(&self, line: String) {
        let mut lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if lines.len() >= RING_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// The kept lines joined with newlines.
    pub fn tail(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        lines
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Drops terminal escape sequences and control characters (SeaBIOS clears the screen).
pub fn clean_line(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte(@..~); other escapes: drop ESC + next char.
            if chars.peek() == Some(&'[') {
                chars.next();
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out.trim_end().to_string()
}

/// Which output a line came from, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The guest's serial console (QEMU stdout).
    Console,
    /// A process's stderr or diagnostic output.
    Diagnostics(&'static str),
}

/// Spawns a task reading `reader` to its end, logging every line and keeping
/// it in `ring` (prefixed with the process name for diagnostics).
pub fn spawn_reader<R>(
    reader: R,
    ring: Ring,
    sandbox: String,
    source: Source,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    spawn_watching_reader(reader, ring, sandbox, source, None)
}

/// A line to look out for: `seen` becomes true on the first line containing
/// `text`.
pub struct Marker {
    pub text: String,
    pub seen: watch::Sender<bool>,
}

/// [`spawn_reader`] that also reports the first line containing `marker`.
pub fn spawn_watching_reader<R>(
    reader: R,
    ring: Ring,
    sandbox: String,
    source: Source,
    marker: Option<Marker>,
) -> tokio::task::JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = reader;
        let mut buf = [0u8; 4096];
        let mut line: Vec<u8> = Vec::new();
        let emit = |line: &mut Vec<u8>| {
            let text = clean_line(line);
            line.clear();
            if text.is_empty() {
                return;
            }
            if let Some(m) = &marker {
                if !*m.seen.borrow() && text.contains(&m.text) {
                    m.seen.send_replace(true);
                }
            }
            match source {
                Source::Console => {
                    tracing::debug!(sandbox = %sandbox, "console: {text}");
                    ring.push(text);
                }
                Source::Diagnostics(name) => {
                    tracing::info!(sandbox = %sandbox, process = name, "{text}");
                    ring.push(format!("[{name}] {text}"));
                }
            }
        };
        loop {
            let n = match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == b'\n' {
                    emit(&mut line);
                } else {
                    line.push(b);
                    if line.len() >= MAX_LINE {
                        emit(&mut line);
                    }
                }
            }
        }
        emit(&mut line);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_last_lines() {
        let r = Ring::default();
        for i in 0..(RING_LINES + 10) {
            r.push(format!("l{i}"));
        }
        let t = r.tail();
        assert!(t.starts_with("l10\n"), "{t}");
        assert!(t.ends_with(&format!("l{}", RING_LINES + 9)));
        assert_eq!(t.lines().count(), RING_LINES);
    }

    #[test]
    fn cleans_escapes() {
        assert_eq!(
            clean_line(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16)\r"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(clean_line(b"plain\ttext"), "plain\ttext");
    }

    #[tokio::test]
    async fn reader_splits_lines() {
        let ring = Ring::default();
        let data: &[u8] = b"one\r\ntwo\n\nthree";
        spawn_reader(data, ring.clone(), "sb".into(), Source::Console)
            .await
            .expect("reader");
        assert_eq!(ring.tail(), "one\ntwo\nthree");
        let ring2 = Ring::default();
        let data: &[u8] = b"oops\n";
        spawn_reader(
            data,
            ring2.clone(),
            "sb".into(),
            Source::Diagnostics("qemu"),
        )
        .await
        .expect("reader");
        assert_eq!(ring2.tail(), "[qemu] oops");
    }

    async fn marker_seen(data: &'static [u8]) -> bool {
        let (tx, rx) = watch::channel(false);
        let marker = Marker {
            text: "kata_agent: agent ready".into(),
            seen: tx,
        };
        let ring = Ring::default();
        spawn_watching_reader(data, ring, "sb".into(), Source::Console, Some(marker))
            .await
            .expect("reader");
        let seen = *rx.borrow();
        seen
    }

    #[tokio::test]
    async fn reader_reports_the_marker_line() {
        assert!(marker_seen(b"booting\n[ 0.7]  INFO kata_agent: agent ready addr=x\n").await);
        let other = b"kata_agent: agent starting\nagent ready elsewhere\n";
        assert!(!marker_seen(other).await, "no such line");
    }
}
