//! Scaffolding for tests that drive a real guest agent (the hypervisor's and
//! this crate's VM tests): where the guest mounts the host's share, a busybox
//! container on it, the sandbox request that mounts the share. One copy, so
//! the VM tests of every crate build containers the way the shim does.

use std::path::{Path, PathBuf};

use protocols::agent::{CreateSandboxRequest, Storage};
use protocols::oci;

/// Where the guest mounts the host's shared directory (virtio-fs `kataShared`).
pub use protocols::share::GUEST_SHARED_DIR;

/// Set to `1` by `.ci/run` (and `make test`): a VM test that cannot get what
/// it needs (the guest image, root, QEMU) fails instead of skipping, so a
/// broken set-up cannot pass as green.
pub const REQUIRE_VM_ENV: &str = "KATA_REQUIRE_VM";

/// Whether VM tests must run here ([`REQUIRE_VM_ENV`] is `1`).
pub fn vm_required() -> bool {
    std::env::var(REQUIRE_VM_ENV).is_ok_and(|v| v == "1")
}

/// A VM test that cannot run: prints why and returns (the caller skips),
/// or panics when [`vm_required`].
pub fn skip_unless_required(why: &str) {
    assert!(
        !vm_required(),
        "{REQUIRE_VM_ENV}=1 and this VM test cannot run: {why}"
    );
    eprintln!("skipping: {why}");
}

/// The guest image directory (`KATA_GUEST_IMAGE_DIR`). `None` (skip) when
/// it is not set, a failure under [`REQUIRE_VM_ENV`]; a directory that is
/// set but lacks the kernel or the initramfs always fails.
pub fn guest_image_dir() -> Option<PathBuf> {
    let Some(dir) = std::env::var_os("KATA_GUEST_IMAGE_DIR").map(PathBuf::from) else {
        skip_unless_required("KATA_GUEST_IMAGE_DIR is not set");
        return None;
    };
    let kernel = ["vmlinux", "vmlinuz"].iter().any(|k| dir.join(k).is_file());
    assert!(
        kernel && dir.join("initrd.img").is_file(),
        "{} has no vmlinux/vmlinuz and initrd.img: run `make image`",
        dir.display()
    );
    Some(dir)
}

/// `name` on `$PATH`, else `fallback`.
pub fn which(name: &str, fallback: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| PathBuf::from(fallback))
}

/// CreateSandbox for `id` with the virtio-fs share mounted at [`GUEST_SHARED_DIR`].
pub fn shared_fs_sandbox(id: &str) -> CreateSandboxRequest {
    CreateSandboxRequest {
        hostname: id.into(),
        sandbox_id: id.into(),
        storages: vec![Storage {
            driver: "virtio-fs".into(),
            fstype: "virtiofs".into(),
            source: "kataShared".into(),
            mount_point: format!("{GUEST_SHARED_DIR}/"),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A busybox rootfs (busybox + `sh`) for container `cid` in the host's share.
pub fn busybox_rootfs(shared: &Path, cid: &str) -> std::io::Result<()> {
    let root = shared.join(cid).join("rootfs");
    for d in ["bin", "proc", "dev", "tmp", "sys"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", root.join("bin/sh"))
}

/// The spec of a busybox container `cid` running `args`: its rootfs on the
/// share, proc and sysfs (the guest's CPUs and memory blocks), its own pid,
/// mount, ipc and uts namespaces.
pub fn busybox_spec(cid: &str, args: &[&str]) -> oci::Spec {
    let mount = |destination: &str, type_: &str| oci::Mount {
        destination: destination.into(),
        source: type_.into(),
        type_: type_.into(),
        ..Default::default()
    };
    oci::Spec {
        Version: "1.1.0".into(),
        Hostname: "c".into(),
        Process: Some(oci::Process {
            Args: args.iter().map(|s| s.to_string()).collect(),
            Env: vec!["PATH=/bin".into()],
            Cwd: "/".into(),
            User: Some(oci::User::default()).into(),
            ..Default::default()
        })
        .into(),
        Root: Some(oci::Root {
            Path: format!("{GUEST_SHARED_DIR}/{cid}/rootfs"),
            ..Default::default()
        })
        .into(),
        Mounts: vec![mount("/proc", "proc"), mount("/sys", "sysfs")],
        Linux: Some(oci::Linux {
            Namespaces: ["pid", "mount", "ipc", "uts"]
                .iter()
                .map(|t| oci::LinuxNamespace {
                    Type: t.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_and_rootfs_agree_on_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        busybox_rootfs(dir.path(), "c1").expect("rootfs");
        assert!(dir.path().join("c1/rootfs/bin/sh").exists());
        let spec = busybox_spec("c1", &["true"]);
        assert_eq!(
            spec.Root.Path,
            format!("{GUEST_SHARED_DIR}/c1/rootfs"),
            "the guest finds the rootfs where the host put it"
        );
        assert_eq!(
            shared_fs_sandbox("sb").storages[0].mount_point,
            format!("{GUEST_SHARED_DIR}/")
        );
    }
}
