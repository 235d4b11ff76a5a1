//! Per-sandbox directory and the small state file that lets `delete` clean
//! up after a daemon that died.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Root of every sandbox's directory on the host.
pub const RUN_ROOT: &str = "/run/kata-shim";

/// Paths of one sandbox. The directory name is a hash of the sandbox id, so
/// socket paths stay under the 108-byte limit whatever the id's length.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPaths {
    pub base: PathBuf,
    /// The hypervisor's run directory (sockets, its own state file).
    pub vm: PathBuf,
    /// Exported to the guest over virtio-fs: a read-only bind of
    /// [`SandboxPaths::mounts`] (see `crate::share`).
    pub shared: PathBuf,
}

impl SandboxPaths {
    pub fn new(root: &Path, sandbox_id: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(sandbox_id.as_bytes());
        let name: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        let base = root.join(name);
        Self {
            vm: base.join("vm"),
            shared: base.join("shared"),
            base,
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.base.join("state.json")
    }

    /// The host-only tree the shim mounts container rootfs and binds in.
    pub fn mounts(&self) -> PathBuf {
        self.base.join("mounts")
    }

    /// Container `cid`'s directory in the host-only tree (`<cid>/rootfs`,
    /// `<cid>/mounts/...`); the guest sees it as `<cid>` on the share.
    pub fn container_dir(&self, cid: &str) -> PathBuf {
        self.mounts().join(cid)
    }
}

/// What the state file records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    pub sandbox_id: String,
    pub paths: SandboxPaths,
    /// Pid of the shim daemon that owns the sandbox.
    pub shim_pid: u32,
    /// Host cgroup directories the daemon created for the VM (removed by
    /// `delete` when the daemon died).
    #[serde(default)]
    pub cgroup_dirs: Vec<PathBuf>,
    /// The pod's netns and the taps made there (absent in older files).
    #[serde(default)]
    pub network: Option<NetRecord>,
}

/// The taps the shim made in a pod's netns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetRecord {
    pub netns: PathBuf,
    pub taps: Vec<TapRecord>,
}

/// One tap and the interface it is redirected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapRecord {
    pub tap: String,
    pub iface: String,
}

pub async fn write(state: &SandboxState) -> Result<()> {
    let path = state.paths.state_file();
    let tmp = path.with_extension("json.tmp");
    let data = serde_json::to_vec_pretty(state)
        .map_err(|e| Error::io("encoding state", std::io::Error::other(e)))?;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .await
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    tokio::io::AsyncWriteExt::write_all(&mut f, &data)
        .await
        .map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    tokio::fs::rename(&tmp, &path)
        .await
        .map_err(|e| Error::io(format!("renaming {}", path.display()), e))
}

pub async fn read(paths: &SandboxPaths) -> Result<Option<SandboxState>> {
    match tokio::fs::read(paths.state_file()).await {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| Error::io("decoding state", std::io::Error::other(e))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("reading state", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_and_keeps_socket_paths_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let long_id = "f".repeat(76);
        let paths = SandboxPaths::new(dir.path(), &long_id);
        assert!(
            paths.vm.join("vhost-vsock.sock").to_string_lossy().len() < 108
                || dir.path().to_string_lossy().len() > 40
        );
        assert_eq!(
            SandboxPaths::new(Path::new(RUN_ROOT), &long_id)
                .vm
                .to_string_lossy()
                .len(),
            "/run/kata-shim/".len() + 16 + 3
        );
        tokio::fs::create_dir_all(&paths.base).await.expect("mkdir");
        let st = SandboxState {
            sandbox_id: long_id.clone(),
            paths: paths.clone(),
            shim_pid: 42,
            cgroup_dirs: vec!["/sys/fs/cgroup/pods/sb".into()],
            network: Some(NetRecord {
                netns: "/run/netns/cni-1".into(),
                taps: vec![TapRecord {
                    tap: "tap0_kata".into(),
                    iface: "eth0".into(),
                }],
            }),
        };
        write(&st).await.expect("write");
        assert_eq!(read(&paths).await.expect("read"), Some(st));
        // A file of a shim before taps were recorded still reads.
        let old = format!(
            r#"{{"sandbox_id":"x","paths":{},"shim_pid":7}}"#,
            serde_json::to_string(&paths).expect("paths")
        );
        tokio::fs::write(paths.state_file(), old)
            .await
            .expect("old file");
        let got = read(&paths).await.expect("read").expect("some");
        assert_eq!((got.shim_pid, got.network), (7, None));
        let other = SandboxPaths::new(dir.path(), "other");
        assert_eq!(read(&other).await.expect("read missing"), None);
    }
}
