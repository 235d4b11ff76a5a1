//! The hybrid vsock handshake answer (`OK <port>\n` from the VMM's vsock
//! backend), read byte by byte by `agent_client::dial::read_line_bytewise`.
//! Properties: a line is returned only when a `\n` arrives within the bound;
//! exactly the line and its newline are consumed (the rest of the stream is
//! ttrpc's); no input panics.
#![no_main]

use agent_client::dial::read_line_bytewise;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// `dial.rs`'s MAX_HANDSHAKE_LINE.
const MAX_LINE: usize = 128;

fuzz_target!(|data: &[u8]| {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    });
    let mut rest: &[u8] = data;
    let got = rt.block_on(read_line_bytewise(&mut rest));
    let newline = data.iter().position(|b| *b == b'\n');
    match (got, newline) {
        (Ok(line), Some(n)) => {
            assert!(n <= MAX_LINE, "over-long answer accepted");
            assert_eq!(line, String::from_utf8_lossy(&data[..n]));
            assert_eq!(rest.len(), data.len() - n - 1, "read past the newline");
            let _accepted = line.starts_with("OK");
        }
        (Ok(_), None) => panic!("a line without a newline"),
        (Err(e), Some(n)) => {
            assert!(n > MAX_LINE, "refused a short answer: {e}");
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            assert!(data.len() - rest.len() <= MAX_LINE + 1);
        }
        (Err(e), None) => {
            assert!(matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ));
            assert!(data.len() - rest.len() <= MAX_LINE + 1);
        }
    }
});
