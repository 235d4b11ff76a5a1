//! A CRI v1 client (runtime + image services, `k8s-cri` on tonic) over
//! containerd's unix socket, with the few builders and waits the tests share.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// CRI `ContainerState` values.
pub const CONTAINER_CREATED: i32 = 0;
pub const CONTAINER_RUNNING: i32 = 1;
pub const CONTAINER_EXITED: i32 = 2;
/// CRI `PodSandboxState` values.
pub const SANDBOX_READY: i32 = 0;
pub const SANDBOX_NOTREADY: i32 = 1;

static UID: AtomicU32 = AtomicU32::new(0);

/// Connected runtime and image service clients.
#[derive(Clone)]
pub struct Cri {
    pub rt: RuntimeServiceClient<Channel>,
    pub img: ImageServiceClient<Channel>,
    /// Pods' log directories live under here.
    pub log_root: PathBuf,
    /// Pods this client started, for scoped leak checks.
    pub pods: super::vms::Tracker,
}

impl Cri {
    /// Connects to containerd's gRPC socket; CRI logs go under `log_root`.
    pub async fn connect(socket: &Path, log_root: &Path) -> Result<Self> {
        let path = socket.to_path_buf();
        // The URI is ignored: every connection dials the unix socket.
        let channel = Endpoint::try_from("http://[::]:0")?
            .connect_timeout(Duration::from_secs(10))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        Ok(Cri {
            rt: RuntimeServiceClient::new(channel.clone()),
            img: ImageServiceClient::new(channel),
            log_root: log_root.to_path_buf(),
            pods: super::vms::Tracker::default(),
        })
    }

    /// A pod config with a unique uid and its own log directory.
    pub fn pod_config(&self, name: &str) -> cri::PodSandboxConfig {
        let uid = format!(
            "{}-{}-{}",
            name,
            std::process::id(),
            UID.fetch_add(1, Ordering::SeqCst)
        );
        let log_dir = self.log_root.join(&uid);
        let _ = std::fs::create_dir_all(&log_dir);
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.to_owned(),
                uid,
                namespace: "default".to_owned(),
                attempt: 0,
            }),
            hostname: name.to_owned(),
            log_directory: log_dir.to_string_lossy().into_owned(),
            labels: HashMap::from([("kata-test".to_owned(), "cri".to_owned())]),
            linux: Some(cri::LinuxPodSandboxConfig::default()),
            ..Default::default()
        }
    }

    /// RunPodSandbox with runtime handler `handler`.
    pub async fn run_pod_with(
        &mut self,
        config: &cri::PodSandboxConfig,
        handler: &str,
    ) -> std::result::Result<String, tonic::Status> {
        let r = self
            .rt
            .run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config.clone()),
                runtime_handler: handler.to_owned(),
            })
            .await?;
        let id = r.into_inner().pod_sandbox_id;
        self.pods.record(&id);
        Ok(id)
    }

    /// RunPodSandbox with runtime handler `kata`.
    pub async fn run_pod(&mut self, config: &cri::PodSandboxConfig) -> Result<String> {
        self.run_pod_with(config, super::HANDLER)
            .await
            .context("RunPodSandbox")
    }

    pub async fn pod_status(&mut self, pod: &str) -> Result<cri::PodSandboxStatus> {
        let r = self
            .rt
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: pod.to_owned(),
                verbose: false,
            })
            .await
            .context("PodSandboxStatus")?;
        r.into_inner().status.context("no pod status")
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub async fn remove_pod(&mut self, pod: &str) -> Result<()> {
        self.rt
            .stop_pod_sandbox(cri::StopPodSandboxRequest {
                pod_sandbox_id: pod.to_owned(),
            })
            .await
            .context("StopPodSandbox")?;
        self.rt
            .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                pod_sandbox_id: pod.to_owned(),
            })
            .await
            .context("RemovePodSandbox")?;
        Ok(())
    }

    /// A container config running `command` from `image`, logging to `<name>.log`.
    pub fn container_config(name: &str, image: &str, command: &[&str]) -> cri::ContainerConfig {
        cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.to_owned(),
                attempt: 0,
            }),
            image: Some(cri::ImageSpec {
                image: image.to_owned(),
                ..Default::default()
            }),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            log_path: format!("{name}.log"),
            linux: Some(cri::LinuxContainerConfig::default()),
            ..Default::default()
        }
    }

    pub async fn create_container_raw(
        &mut self,
        pod: &str,
        config: &cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> std::result::Result<String, tonic::Status> {
        let r = self
            .rt
            .create_container(cri::CreateContainerRequest {
                pod_sandbox_id: pod.to_owned(),
                config: Some(config.clone()),
                sandbox_config: Some(pod_config.clone()),
            })
            .await?;
        Ok(r.into_inner().container_id)
    }

    /// CreateContainer + StartContainer.
    pub async fn run_container(
        &mut self,
        pod: &str,
        config: &cri::ContainerConfig,
        pod_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let id = self
            .create_container_raw(pod, config, pod_config)
            .await
            .context("CreateContainer")?;
        self.rt
            .start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            })
            .await
            .context("StartContainer")?;
        Ok(id)
    }

    pub async fn container_status(&mut self, id: &str) -> Result<cri::ContainerStatus> {
        let r = self
            .rt
            .container_status(cri::ContainerStatusRequest {
                container_id: id.to_owned(),
                verbose: false,
            })
            .await
            .context("ContainerStatus")?;
        r.into_inner().status.context("no container status")
    }

    /// Polls ContainerStatus until the container has exited.
    pub async fn wait_exited(
        &mut self,
        id: &str,
        timeout: Duration,
    ) -> Result<cri::ContainerStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.container_status(id).await?;
            if st.state == CONTAINER_EXITED {
                return Ok(st);
            }
            if Instant::now() > deadline {
                bail!(
                    "container {id} still in state {} after {timeout:?}",
                    st.state
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn stop_container(&mut self, id: &str, timeout_s: i64) -> Result<()> {
        self.rt
            .stop_container(cri::StopContainerRequest {
                container_id: id.to_owned(),
                timeout: timeout_s,
            })
            .await
            .context("StopContainer")?;
        Ok(())
    }

    pub async fn remove_container(&mut self, id: &str) -> Result<()> {
        self.rt
            .remove_container(cri::RemoveContainerRequest {
                container_id: id.to_owned(),
            })
            .await
            .context("RemoveContainer")?;
        Ok(())
    }

    pub async fn exec_sync(
        &mut self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> std::result::Result<cri::ExecSyncResponse, tonic::Status> {
        let r = self
            .rt
            .exec_sync(cri::ExecSyncRequest {
                container_id: id.to_owned(),
                cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
                timeout: timeout_s,
            })
            .await?;
        Ok(r.into_inner())
    }

    /// ExecSync that must exit 0; returns its stdout.
    pub async fn exec_ok(&mut self, id: &str, cmd: &[&str]) -> Result<String> {
        let r = self
            .exec_sync(id, cmd, 60)
            .await
            .with_context(|| format!("ExecSync {cmd:?}"))?;
        if r.exit_code != 0 {
            bail!(
                "ExecSync {cmd:?} exited {}: {}",
                r.exit_code,
                String::from_utf8_lossy(&r.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// The container's CRI log file (pod log directory + container log path).
    pub fn log_file(pod_config: &cri::PodSandboxConfig, config: &cri::ContainerConfig) -> PathBuf {
        Path::new(&pod_config.log_directory).join(&config.log_path)
    }

    /// Waits until the container's log has a full stdout line equal to `want`.
    pub async fn wait_log_line(path: &Path, want: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let entries = super::logs::parse(&text).map_err(anyhow::Error::msg)?;
            if super::logs::lines(&entries, "stdout")
                .iter()
                .any(|l| l == want)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{want:?} not in {} after {timeout:?}; log:\n{text}",
                    path.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
