//! Kata annotations under a configuration's policy (`shim::annotations`):
//! `enable_annotations` regexes, `valid_*_paths` globs, values.
//! Properties: an accepted binary path is absolute, normalised and matched
//! by one of its globs under shell rules (checked by an independent glob
//! matcher: `*`/`?` never match `/`); accepted numbers and names are in
//! range; a refusal leaves the overrides unchanged; no input panics.
#![no_main]

use std::collections::HashMap;
use std::path::{Component, Path};

use arbitrary::Arbitrary;
use containerd_shim_kata_v2::annotations::{
    apply, check_policy, AnnotationPolicy, Overrides, HYPERVISOR_PREFIX, MIN_MEMORY_MIB,
};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    enable: Vec<String>,
    hypervisor_paths: Vec<String>,
    fs_daemon_paths: Vec<String>,
    /// Short keys get the hypervisor prefix when the flag is set.
    annotations: Vec<(bool, String, String)>,
}

/// Shell glob match (fnmatch with FNM_PATHNAME), written independently of
/// the shim's regex translation. `None` for a malformed glob.
fn glob_match(g: &[char], s: &[char]) -> Option<bool> {
    let Some((&c, rest)) = g.split_first() else {
        return Some(s.is_empty());
    };
    match c {
        '*' => {
            for i in 0..=s.len() {
                if i > 0 && s[i - 1] == '/' {
                    break;
                }
                if glob_match(rest, &s[i..])? {
                    return Some(true);
                }
            }
            // A malformed tail is malformed wherever `*` stops.
            glob_match(rest, &[])?;
            Some(false)
        }
        '?' => match s.split_first() {
            Some((&h, t)) if h != '/' => glob_match(rest, t),
            _ => {
                glob_match(rest, &[])?;
                Some(false)
            }
        },
        '[' => {
            let mut i = 0;
            let negate = matches!(rest.first(), Some('!' | '^'));
            if negate {
                i += 1;
            }
            let start = i;
            let mut set = Vec::new();
            loop {
                let &c = rest.get(i)?;
                if c == ']' && i > start {
                    break;
                }
                set.push(c);
                i += 1;
            }
            let tail = &rest[i + 1..];
            // Ranges `a-z` (not first or last).
            let in_set = |x: char| {
                let mut k = 0;
                while k < set.len() {
                    if k + 2 < set.len() && set[k + 1] == '-' {
                        if set[k] <= x && x <= set[k + 2] {
                            return true;
                        }
                        k += 3;
                    } else {
                        if set[k] == x {
                            return true;
                        }
                        k += 1;
                    }
                }
                false
            };
            match s.split_first() {
                Some((&h, t)) if h != '/' && in_set(h) != negate => glob_match(tail, t),
                _ => {
                    glob_match(tail, &[])?;
                    Some(false)
                }
            }
        }
        c => match s.split_first() {
            Some((&h, t)) if h == c => glob_match(rest, t),
            _ => {
                glob_match(rest, &[])?;
                Some(false)
            }
        },
    }
}

fn matched_by(globs: &[String], path: &str) -> bool {
    let s: Vec<char> = path.chars().collect();
    globs.iter().any(|g| {
        let g: Vec<char> = g.chars().collect();
        glob_match(&g, &s) == Some(true)
    })
}

fn checked_path(p: &Path, globs: &[String]) {
    assert!(p.is_absolute());
    assert!(p
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_))));
    let s = p.to_str().expect("from a str");
    assert!(
        matched_by(globs, s),
        "{s:?} accepted, no glob of {globs:?} matches"
    );
}

fuzz_target!(|input: Input| {
    let policy = AnnotationPolicy {
        enable_annotations: input.enable,
        valid_hypervisor_paths: input.hypervisor_paths,
        valid_virtio_fs_daemon_paths: input.fs_daemon_paths,
    };
    let _ = check_policy(&policy);
    let annotations: HashMap<String, String> = input
        .annotations
        .into_iter()
        .map(|(prefix, k, v)| {
            let k = if prefix {
                format!("{HYPERVISOR_PREFIX}{k}")
            } else {
                k
            };
            (k, v)
        })
        .collect();
    let before = Overrides {
        default_vcpus: Some(7),
        ..Default::default()
    };
    let mut o = before.clone();
    match apply(&annotations, &policy, &mut o) {
        Err(_) => assert_eq!(o, before, "a refusal changed the overrides"),
        Ok(()) => {
            if let Some(p) = &o.path {
                checked_path(p, &policy.valid_hypervisor_paths);
            }
            if let Some(p) = &o.virtio_fs_daemon {
                checked_path(p, &policy.valid_virtio_fs_daemon_paths);
            }
            if let Some(k) = &o.kernel_params {
                assert!(!k.is_empty() && !k.contains(char::is_control));
            }
            if let Some(v) = o.default_vcpus {
                assert!(v >= 1);
            }
            if let Some(m) = o.default_memory {
                assert!(m >= MIN_MEMORY_MIB);
            }
            if let Some(m) = &o.machine_type {
                assert!(!m.is_empty() && !m.contains(','));
                assert!(m
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_".contains(c)));
            }
        }
    }
});
