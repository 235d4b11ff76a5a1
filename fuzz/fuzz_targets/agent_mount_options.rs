//! The guest agent's mount(8)-style option parser (`mounts::parse_options`).
//! Properties: the last of a flag and its opposite wins; the data string
//! holds exactly the unrecognised options, in order, and reparsing it gives
//! no flags and the same data; no input panics.
#![no_main]

use kata_shim_fuzz::mounts::parse_options;
use libfuzzer_sys::fuzz_target;
use nix::mount::MsFlags;

const PAIRS: [(&str, &str, MsFlags); 6] = [
    ("ro", "rw", MsFlags::MS_RDONLY),
    ("nosuid", "suid", MsFlags::MS_NOSUID),
    ("nodev", "dev", MsFlags::MS_NODEV),
    ("noexec", "exec", MsFlags::MS_NOEXEC),
    ("sync", "async", MsFlags::MS_SYNCHRONOUS),
    ("noatime", "atime", MsFlags::MS_NOATIME),
];

fuzz_target!(|options: Vec<String>| {
    let (flags, data) = parse_options(&options);
    let words: Vec<&str> = options.iter().flat_map(|o| o.split(',')).collect();
    for (set, clear, flag) in PAIRS {
        let last = words.iter().rev().find(|w| {
            **w == set || **w == clear || (clear == "rw" && matches!(**w, "" | "defaults"))
        });
        match last {
            Some(w) => assert_eq!(
                flags.contains(flag),
                *w == set,
                "{set}/{clear} in {words:?}"
            ),
            None => assert!(!flags.contains(flag)),
        }
    }
    if !data.is_empty() {
        let (again, data2) = parse_options(std::slice::from_ref(&data));
        assert!(again.is_empty(), "data {data:?} holds flags");
        assert_eq!(data2, data);
    }
    assert!(!data
        .split(',')
        .any(|w| matches!(w, "ro" | "rw" | "bind" | "rbind" | "remount")));
});
