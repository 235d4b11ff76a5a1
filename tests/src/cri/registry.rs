//! A local image registry (Debian's `docker-registry`) on a loopback port,
//! fed with `skopeo` from the project's offline OCI archives, so that CRI
//! PullImage works without any network. containerd's CRI plugin talks plain
//! HTTP to loopback registries without extra configuration.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running `docker-registry serve` on 127.0.0.1.
pub struct Registry {
    /// `127.0.0.1:<port>`
    pub addr: String,
    dir: PathBuf,
    child: Child,
}

impl Registry {
    /// Starts a registry storing its blobs under `dir`.
    pub fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                 rootdirectory: {}\nhttp:\n  addr: {addr}\n",
                dir.join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry (apt-get install docker-registry)")?;
        let reg = Registry {
            addr,
            dir: dir.to_path_buf(),
            child,
        };
        crate::wait_until(Duration::from_secs(15), || {
            std::net::TcpStream::connect(&reg.addr).is_ok()
        })
        .context("docker-registry did not listen")?;
        Ok(reg)
    }

    /// Pushes an OCI archive as `<addr>/<repo_tag>`; returns that reference.
    pub fn push(&self, archive: &Path, repo_tag: &str) -> Result<String> {
        let policy = self.dir.join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )?;
        let reference = format!("{}/{repo_tag}", self.addr);
        let out = Command::new("skopeo")
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}", archive.display()))
            .arg(format!("docker://{reference}"))
            .stdin(Stdio::null())
            .output()
            .context("running skopeo (apt-get install skopeo)")?;
        if !out.status.success() {
            bail!("skopeo copy: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(reference)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
