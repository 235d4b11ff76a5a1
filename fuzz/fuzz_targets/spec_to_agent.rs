//! A bundle's config.json (any JSON parsed as `oci_spec::runtime::Spec`)
//! converted by `shim::spec::to_agent_spec` for a container id accepted by
//! Task.Create. Properties: the guest rootfs is the container's directory on
//! the guest share; every bind's share path is `mounts/<n>-<[A-Za-z0-9._-]*>`
//! with n its index, and its guest source is that path on the share; a
//! container asking for a user namespace is refused; no input panics.
#![no_main]

use std::path::{Component, Path};

use containerd_shim_kata_v2::spec::{to_agent_spec, GUEST_SHARED_DIR};
use libfuzzer_sys::fuzz_target;
use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// Task.Create's check of the container id.
fn valid_cid(cid: &str) -> bool {
    !(cid.is_empty() || cid.contains('/') || cid == "." || cid == "..")
}

fn inside_share(path: &str, cid: &str) -> bool {
    let p = Path::new(path);
    p.starts_with(Path::new(GUEST_SHARED_DIR).join(cid))
        && p.components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

fuzz_target!(|data: &[u8]| {
    // `<cid>\n<config.json>`; no newline: cid "c".
    let (cid, json) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("c".to_string(), data),
    };
    if !valid_cid(&cid) {
        return;
    }
    let Ok(spec) = serde_json::from_slice::<Spec>(json) else {
        return;
    };
    let Ok((agent, binds)) = to_agent_spec(&spec, &cid) else {
        return;
    };
    let root = &agent.Root.Path;
    assert!(inside_share(root, &cid), "rootfs {root:?} leaves the share");
    assert_eq!(
        Path::new(root),
        Path::new(GUEST_SHARED_DIR).join(&cid).join("rootfs")
    );
    for (n, b) in binds.iter().enumerate() {
        let name = b
            .share_path
            .strip_prefix(&format!("mounts/{n}-"))
            .unwrap_or_else(|| panic!("share path {:?} for bind {n}", b.share_path));
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')),
            "share name {name:?}"
        );
        let parts: Vec<_> = Path::new(&b.share_path).components().collect();
        assert!(parts.len() == 2 && parts.iter().all(|c| matches!(c, Component::Normal(_))));
        assert!(b.source.is_absolute());
        let guest = format!("{GUEST_SHARED_DIR}/{cid}/{}", b.share_path);
        assert!(inside_share(&guest, &cid), "bind source {guest:?}");
        assert!(
            agent
                .Mounts
                .iter()
                .any(|m| m.type_ == "bind" && m.source == guest),
            "bind {n} has no guest mount"
        );
    }
    let bind_mounts = agent.Mounts.iter().filter(|m| m.type_ == "bind").count();
    assert_eq!(bind_mounts, binds.len());
    if let Some(linux) = spec.linux() {
        assert!(!linux
            .namespaces()
            .iter()
            .flatten()
            .any(|ns| ns.typ() == LinuxNamespaceType::User));
        assert!(agent
            .Linux
            .Namespaces
            .iter()
            .all(|ns| ns.Path.is_empty() && ns.Type != "network" && ns.Type != "user"));
    }
});
