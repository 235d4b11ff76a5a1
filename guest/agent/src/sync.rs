//! Framing of the private socket between the agent and its container helper
//! (`kata-agent` re-executed as `__kata-container-init`, see `runtime`).
//!
//! Frames: a tag byte, a little-endian u32 length, the payload.
//! Agent → helper: `C` config, `G` go on (cgroup joined), `S` start (exec).
//! Helper → agent: `P` pid of the container process, `W` warning to log,
//! `T` the fd number of the pty master it opened in the container (the agent
//! copies it with pidfd_getfd), `R` ready (set up, waiting for `S`), `E` error
//! (the helper then exits).
//! A successful exec closes the socket (it is close-on-exec): the agent reads EOF.
use std::io::{self, Read, Write};

pub const CONFIG: u8 = b'C';
pub const GO: u8 = b'G';
pub const START: u8 = b'S';
pub const PID: u8 = b'P';
pub const WARN: u8 = b'W';
pub const READY: u8 = b'R';
pub const TTY: u8 = b'T';
pub const ERROR: u8 = b'E';

/// Largest frame accepted (an OCI spec is far smaller).
const MAX_FRAME: u32 = 16 << 20;

/// Mode byte at the start of a config payload.
pub const MODE_CREATE: u8 = 1;
pub const MODE_EXEC: u8 = 2;

pub fn write_frame(w: &mut impl Write, tag: u8, payload: &[u8]) -> io::Result<()> {
    let len = u32::try_from(payload.len()).map_err(|_| io::Error::other("frame too large"))?;
    let mut buf = Vec::with_capacity(5 + payload.len());
    buf.push(tag);
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(payload);
    w.write_all(&buf)
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 5];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(io::Error::other("frame too large"));
    }
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload)?;
    Ok(Some((head[0], payload)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() -> io::Result<()> {
        let mut buf = Vec::new();
        write_frame(&mut buf, PID, &42u32.to_le_bytes())?;
        write_frame(&mut buf, READY, b"")?;
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r)?,
            Some((PID, 42u32.to_le_bytes().to_vec()))
        );
        assert_eq!(read_frame(&mut r)?, Some((READY, vec![])));
        assert_eq!(read_frame(&mut r)?, None);
        Ok(())
    }
}
