//! The share as a hostile guest sees it. These mount for real: they need
//! root (CI runs them as root; elsewhere they say so and pass).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::*;

fn have_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "the share tests need root under CI"
    );
    eprintln!("not root: share mount test not run");
    false
}

struct Rig {
    _dir: tempfile::TempDir,
    paths: SandboxPaths,
    /// Host data a volume binds, outside the sandbox.
    volume: PathBuf,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = SandboxPaths::new(&dir.path().join("run"), "sb");
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).expect("volume");
    std::fs::write(volume.join("data"), b"host").expect("data");
    prepare(&paths).expect("prepare");
    Rig {
        _dir: dir,
        paths,
        volume,
    }
}

fn bundle_with_rootfs(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(bundle.join("rootfs/etc")).expect("rootfs");
    bundle
}

fn container(r: &Rig, cid: &str, readonly: bool, binds: Vec<HostBind>) -> ContainerMounts {
    ContainerMounts {
        cid: cid.into(),
        rootfs: vec![],
        bundle: bundle_with_rootfs(r.paths.base.parent().expect("root").parent().expect("dir")),
        readonly,
        binds,
    }
}

fn bind(source: &Path, share_path: &str, options: &[&str]) -> HostBind {
    HostBind {
        source: source.to_path_buf(),
        share_path: share_path.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

fn is_erofs(r: std::io::Result<()>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EROFS))
}

#[test]
fn the_export_is_read_only_and_private() {
    if !have_root() {
        return;
    }
    let r = rig();
    for d in [
        &r.paths.base,
        &r.paths.vm,
        &r.paths.mounts(),
        &r.paths.shared,
    ] {
        let mode = std::fs::metadata(d).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{}", d.display());
    }
    // What the guest sees: nothing can be created at the top of the share.
    assert!(is_erofs(std::fs::create_dir(r.paths.shared.join("c2"))));
    assert!(is_erofs(std::os::unix::fs::symlink(
        "/etc",
        r.paths.shared.join("c2")
    )));
    // The host-only side stays writable for the shim.
    std::fs::create_dir(r.paths.mounts().join("x")).expect("host side");
    assert!(r.paths.shared.join("x").is_dir(), "shared/ mirrors mounts/");
    teardown(&r.paths).expect("teardown");
    assert!(!r.paths.base.exists());
}

#[test]
fn guest_writes_reach_rw_mounts_only() {
    if !have_root() {
        return;
    }
    let r = rig();
    let ro_src = r.volume.clone();
    let rw_src = r.volume.parent().expect("dir").join("rw");
    std::fs::create_dir(&rw_src).expect("rw");
    let c = container(
        &r,
        "c1",
        false,
        vec![
            bind(&ro_src, "mounts/0-ro", &["rbind", "ro"]),
            bind(&rw_src, "mounts/1-rw", &["rbind", "rw"]),
        ],
    );
    mount_container(&r.paths, &c).expect("mount");
    let seen = r.paths.shared.join("c1");
    // Through the export (the guest's view) and on the host-only side alike.
    for base in [&seen, &r.paths.container_dir("c1")] {
        assert_eq!(
            std::fs::read(base.join("mounts/0-ro/data")).expect("read"),
            b"host"
        );
        assert!(is_erofs(std::fs::write(
            base.join("mounts/0-ro/data"),
            b"x"
        )));
        assert!(is_erofs(std::fs::write(base.join("mounts/0-ro/new"), b"x")));
    }
    std::fs::write(seen.join("mounts/1-rw/new"), b"guest").expect("rw volume");
    std::fs::write(seen.join("rootfs/etc/x"), b"guest").expect("rw rootfs");
    // The container's own directory on the share is not the guest's to change.
    assert!(is_erofs(std::fs::create_dir(seen.join("mounts/2-planted"))));
    assert!(is_erofs(std::fs::remove_dir(seen.join("mounts/1-rw"))));
    assert_eq!(std::fs::read(ro_src.join("data")).expect("read"), b"host");

    unmount_container(&r.paths, "c1").expect("unmount");
    assert!(!r.paths.container_dir("c1").exists());
    assert!(mountinfo::mounts_below(&r.paths.mounts())
        .expect("mountinfo")
        .iter()
        .all(|m| m == &r.paths.mounts()));
    teardown(&r.paths).expect("teardown");
    assert!(mountinfo::mounts_below(&r.paths.base)
        .expect("mountinfo")
        .is_empty());
}

#[test]
fn a_read_only_rootfs_is_read_only_on_the_host() {
    if !have_root() {
        return;
    }
    let r = rig();
    mount_container(&r.paths, &container(&r, "ro", true, vec![])).expect("mount");
    let seen = r.paths.shared.join("ro/rootfs");
    assert!(seen.join("etc").is_dir());
    assert!(is_erofs(std::fs::write(seen.join("etc/x"), b"x")));
    teardown(&r.paths).expect("teardown");
    assert!(!r.paths.base.exists());
}

#[test]
fn planted_links_never_redirect_a_mount() {
    if !have_root() {
        return;
    }
    let r = rig();
    let victim = tempfile::tempdir().expect("victim");
    // Suppose a link did get into the host-only tree (it cannot through the
    // share): the shim refuses it and mounts nothing anywhere.
    std::os::unix::fs::symlink(victim.path(), r.paths.container_dir("c2")).expect("plant");
    let e = mount_container(&r.paths, &container(&r, "c2", false, vec![]))
        .expect_err("a link in the way");
    assert!(e.to_string().contains("c2"), "{e}");
    std::fs::create_dir_all(r.paths.container_dir("c3/mounts")).expect("dir");
    std::os::unix::fs::symlink(
        victim.path(),
        r.paths.container_dir("c3").join("mounts/0-vol"),
    )
    .expect("plant");
    let c = container(
        &r,
        "c3",
        false,
        vec![bind(&r.volume, "mounts/0-vol", &["rbind"])],
    );
    mount_container(&r.paths, &c).expect_err("a link at the target");
    assert!(std::fs::read_dir(victim.path())
        .expect("ls")
        .next()
        .is_none());
    assert!(
        mountinfo::mounts_below(victim.path())
            .expect("mountinfo")
            .is_empty(),
        "nothing mounted on the victim"
    );
    assert!(
        !r.paths.container_dir("c3").join("rootfs").exists(),
        "the failed create was undone"
    );
    // Cleanup removed the planted link itself, not what it pointed at.
    assert!(std::fs::symlink_metadata(r.paths.container_dir("c2")).is_err());
    assert!(victim.path().is_dir());
    teardown(&r.paths).expect("teardown");
    assert!(victim.path().is_dir());
}

#[test]
fn odd_bind_names_are_mounted_and_cleaned_up() {
    if !have_root() {
        return;
    }
    let r = rig();
    let dir = r.volume.parent().expect("dir").to_path_buf();
    let mut binds = Vec::new();
    for (i, name) in ["a b", "new\nline", "back\\slash", "tab\tx"]
        .iter()
        .enumerate()
    {
        let src = dir.join(name);
        std::fs::create_dir(&src).expect("odd dir");
        binds.push(bind(&src, &format!("mounts/{i}-{name}"), &["rbind", "ro"]));
    }
    let file = dir.join("hosts file");
    std::fs::write(&file, b"127.0.0.1 x").expect("file");
    binds.push(bind(&file, "mounts/9-hosts", &["bind", "ro"]));
    mount_container(&r.paths, &container(&r, "odd", false, binds)).expect("mount");
    assert_eq!(
        std::fs::read(r.paths.shared.join("odd/mounts/9-hosts")).expect("file bind"),
        b"127.0.0.1 x"
    );
    unmount_container(&r.paths, "odd").expect("unmount");
    assert!(!r.paths.container_dir("odd").exists());
    teardown(&r.paths).expect("teardown");
    assert!(!r.paths.base.exists());
    assert!(
        std::fs::read_dir(&dir)
            .expect("ls")
            .filter_map(|e| e.ok())
            .all(|e| e.file_type().map(|t| !t.is_symlink()).unwrap_or(true)),
        "sources untouched"
    );
}
