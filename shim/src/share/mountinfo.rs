//! `/proc/self/mountinfo`: which mount points lie below a directory.
//!
//! The kernel escapes space, tab, newline and backslash in paths as `\ooo`
//! octal; a path taken verbatim would never match a bind target whose name
//! holds one of them, and its mount would be left behind.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The mount point (field 5) of one mountinfo line, unescaped; `None` for a
/// malformed line.
pub fn mount_point(line: &str) -> Option<PathBuf> {
    let field = line.split(' ').nth(4)?;
    if !field.starts_with('/') {
        return None;
    }
    Some(PathBuf::from(OsString::from_vec(unescape(
        field.as_bytes(),
    ))))
}

/// Undoes the kernel's `\ooo` escaping; anything else is kept as it is.
pub fn unescape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'\\' && i + 3 < s.len() && is_octal(&s[i + 1..i + 4]) {
            let v = (s[i + 1] - b'0') * 64 + (s[i + 2] - b'0') * 8 + (s[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    out
}

fn is_octal(d: &[u8]) -> bool {
    d.len() == 3 && d[0] <= b'3' && d.iter().all(|c| (b'0'..=b'7').contains(c))
}

/// Mount points at or below `dir` in `mountinfo`, deepest first, one entry
/// per mount: a point mounted over twice is listed twice, as each unmount
/// takes one layer off. (It was deduplicated with `dedup`, which only drops
/// neighbours: lines apart came back twice, neighbours once, leaving the
/// lower layer of a stacked mount behind at teardown.)
pub fn below(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(mount_point)
        .filter(|mp| mp.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

/// Mount points at or below `dir` in this process's mount namespace.
pub fn mounts_below(dir: &Path) -> crate::error::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| crate::error::Error::io("reading mountinfo", e))?;
    Ok(below(&info, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_odd_names_and_keeps_prefix_boundaries() {
        let info = "\
36 25 0:32 / /run/k/mounts rw shared:1 - tmpfs tmpfs rw
37 36 0:33 / /run/k/mounts/c1/rootfs rw - overlay overlay rw
38 36 8:1 /vol /run/k/mounts/c1/mounts/0-a\\040b\\012c\\134d rw - ext4 /dev/vda rw
39 25 0:34 / /run/k/mounts-other rw - tmpfs tmpfs rw
garbage
40 25 0:35 / relative rw - tmpfs tmpfs rw";
        let got = below(info, Path::new("/run/k/mounts"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/k/mounts/c1/mounts/0-a b\nc\\d"),
                PathBuf::from("/run/k/mounts/c1/rootfs"),
                PathBuf::from("/run/k/mounts"),
            ]
        );
        assert_eq!(unescape(b"a\\0"), b"a\\0");
        assert_eq!(unescape(b"\\777x"), b"\\777x");
        assert_eq!(unescape(b"\\"), b"\\");
    }

    #[test]
    fn a_stacked_mount_is_listed_once_per_layer() {
        // Found by fuzzing (fuzz/fuzz_targets/mountinfo.rs): lines for one
        // point came back twice when apart, once when neighbours.
        let apart = "\
1 0 0:1 / /d/a rw - tmpfs t rw
2 0 0:2 / /d/b rw - tmpfs t rw
3 0 0:3 / /d/a rw - tmpfs t rw";
        let mut got = below(apart, Path::new("/d"));
        got.sort();
        assert_eq!(got, ["/d/a", "/d/a", "/d/b"].map(PathBuf::from));
        let together = "\
1 0 0:1 / /d/a rw - tmpfs t rw
3 0 0:3 / /d/a rw - tmpfs t rw";
        assert_eq!(
            below(together, Path::new("/d")),
            ["/d/a", "/d/a"].map(PathBuf::from)
        );
    }

    #[test]
    fn own_mounts_are_readable() {
        assert!(!mounts_below(Path::new("/")).expect("mountinfo").is_empty());
    }
}
