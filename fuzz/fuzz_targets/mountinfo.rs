//! `/proc/self/mountinfo` parsing (`shim::share::mountinfo`). Properties:
//! `unescape` never lengthens and inverts the kernel's `\ooo` escaping of
//! space, tab, newline and backslash; `mount_point` gives absolute paths;
//! `below` only returns paths at or below the directory, one entry per
//! mount (a point mounted over twice: twice), deepest first; no input panics.
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use containerd_shim_kata_v2::share::mountinfo::{below, mount_point, unescape};
use libfuzzer_sys::fuzz_target;

/// The kernel's `mangle()` for mountinfo paths (fs/proc_namespace.c).
fn escape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in raw {
        if matches!(b, b' ' | b'\t' | b'\n' | b'\\') {
            out.extend(format!("\\{b:03o}").bytes());
        } else {
            out.push(b);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let u = unescape(data);
    assert!(u.len() <= data.len());
    assert_eq!(unescape(&escape(data)), data, "escape/unescape round trip");

    // First line: the directory; the rest: a mountinfo text.
    let text = String::from_utf8_lossy(data);
    let (dir, info) = text.split_once('\n').unwrap_or(("/", &text));
    let dir = Path::new(OsStr::from_bytes(dir.as_bytes()));
    for line in info.lines() {
        if let Some(mp) = mount_point(line) {
            assert!(mp.is_absolute());
        }
    }
    let found = below(info, dir);
    for (i, p) in found.iter().enumerate() {
        assert!(p.starts_with(dir), "{p:?} is not below {dir:?}");
        let lines = info
            .lines()
            .filter(|l| mount_point(l).as_ref() == Some(p))
            .count();
        let listed = found.iter().filter(|q| *q == p).count();
        assert_eq!(
            listed, lines,
            "{p:?}: {lines} mounts, listed {listed} times"
        );
        if i > 0 {
            assert!(found[i - 1].components().count() >= p.components().count());
        }
    }
});
