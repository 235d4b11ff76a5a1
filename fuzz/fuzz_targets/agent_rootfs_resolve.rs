//! The guest agent's rootfs path resolver (`rootfs::under`, like
//! filepath-securejoin), on a real directory tree built from the input:
//! directories and symbolic links with arbitrary targets (absolute, `..`,
//! loops). Property: a resolved path never leaves the root — it is the root
//! joined with plain components, and none of its existing components is a
//! link, so the kernel walking it stays under the root too; no input panics.
#![no_main]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};

use arbitrary::Arbitrary;
use kata_shim_fuzz::runtime::resolve_under;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Entry {
    Dir(String),
    Link(String, String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    entries: Vec<Entry>,
    path: String,
}

/// A relative path made of plain names only (what the tree is built from).
fn plain(p: &str) -> Option<PathBuf> {
    let p = Path::new(p.trim_start_matches('/'));
    let ok = p.components().count() > 0
        && p.components().all(|c| matches!(c, Component::Normal(_)))
        && p.as_os_str().len() < 200;
    ok.then(|| p.to_path_buf())
}

fuzz_target!(|input: Input| {
    if input.entries.len() > 16 || input.path.contains('\0') {
        return;
    }
    let tmp = tempfile::Builder::new()
        .prefix("fuzz-rootfs")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        })
        .expect("tempdir");
    let root = tmp.path().join("root");
    fs::create_dir(&root).expect("root");
    // A sibling the links may point at from outside.
    fs::create_dir(tmp.path().join("outside")).expect("outside");
    for e in &input.entries {
        match e {
            Entry::Dir(d) => {
                if let Some(d) = plain(d) {
                    let _ = fs::create_dir_all(root.join(d));
                }
            }
            Entry::Link(at, target) => {
                if let (Some(at), false) = (plain(at), target.contains('\0')) {
                    let at = root.join(at);
                    if let Some(parent) = at.parent() {
                        let _ = fs::create_dir_all(parent);
                    }
                    let _ = symlink(target, &at);
                }
            }
        }
    }
    let Some(got) = resolve_under(&root, &input.path) else {
        return;
    };
    let rel = got
        .strip_prefix(&root)
        .unwrap_or_else(|_| panic!("{got:?} is not under {root:?}"));
    let mut walked = root.clone();
    for c in rel.components() {
        let Component::Normal(name) = c else {
            panic!("{got:?} has a {c:?} component");
        };
        walked.push(name);
        if let Ok(m) = fs::symlink_metadata(&walked) {
            assert!(
                !m.file_type().is_symlink(),
                "{walked:?} in {got:?} is a link"
            );
        }
    }
    // However the kernel walks it, it stays in the root.
    let croot = fs::canonicalize(&root).expect("root");
    let mut existing = got.as_path();
    while fs::symlink_metadata(existing).is_err() {
        existing = existing.parent().expect("root exists");
    }
    let real = fs::canonicalize(existing).expect("canonical");
    assert!(real.starts_with(&croot), "{got:?} resolves to {real:?}");
});
