//! Task.Create: boots the sandbox for the first container, then creates the
//! container in the guest.

use std::path::Path;
use std::sync::Arc;

use protocols::agent::CreateContainerRequest;
use protocols::containerd::api;
use protocols::containerd::events::task::{TaskCreate, TaskIO};
use protocols::protobuf::well_known_types::any::Any;
use protocols::protobuf::{CodedInputStream, MessageField};
use tracing::Instrument;

use super::{Container, TaskService};
use crate::annotations::cri;
use crate::error::{Error, Result};
use crate::process::{Process, Stdio};
use crate::sandbox::{BootParams, Sandbox, Seams};
use crate::share::{self, ContainerMounts, RootfsMount};
use crate::{config, hooks, podsize, spec};

/// `config_path` (field 2) of containerd's `runtimeoptions.v1.Options`, the
/// runtime option Kata's users set `ConfigPath` with.
pub fn config_path_option(options: Option<&Any>) -> Option<String> {
    let any = options?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut found = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if wire == 2 {
            // Other fields may hold bytes (`config_body`): only field 2 must be UTF-8.
            let value = input.read_bytes().ok()?;
            if field == 2 {
                found = Some(String::from_utf8(value).ok()?);
            }
        } else if input
            .skip_field(protocols::protobuf::rt::WireType::new(wire)?)
            .is_err()
        {
            break;
        }
    }
    found
}

/// Finds and reads the configuration file (`explicit` first, then
/// `KATA_CONF_FILE` and the default paths), off the async runtime.
pub(super) async fn read_config(explicit: Option<String>) -> Result<config::Config> {
    crate::blocking::run(move || config::load(&config::locate(explicit.as_deref())?)).await
}

/// Runs the spec's create-time hooks, before anything is created: a failing
/// hook leaves nothing, and one that fills the pod's network namespace does
/// so before the VM takes its interfaces. Answers whether poststart or
/// poststop hooks remain for later.
async fn create_hooks(spec: &oci_spec::runtime::Spec, cid: &str, bundle: &str) -> Result<bool> {
    let t = std::time::Instant::now();
    let hook_ctx = hooks::Context {
        spec,
        id: cid,
        bundle,
        pid: std::process::id(),
    };
    hooks::run(&hook_ctx, &hooks::Phase::CREATE).await?;
    if hooks::any(spec, &hooks::Phase::CREATE) {
        crate::sandbox::phase(cid, "hooks", t);
    }
    Ok(hooks::any(
        spec,
        &[hooks::Phase::Poststart, hooks::Phase::Poststop],
    ))
}

/// The rootfs mounts containerd sent, checked (overlay and bind only).
fn rootfs_mounts(req: &api::CreateTaskRequest) -> Result<Vec<RootfsMount>> {
    let mounts: Vec<RootfsMount> = req
        .rootfs
        .iter()
        .map(|m| RootfsMount {
            typ: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect();
    share::validate(&mounts)?;
    Ok(mounts)
}

impl TaskService {
    pub(super) async fn do_create(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse> {
        let cid = req.id.clone();
        self.check_new_id(&cid)?;
        let spec = spec::load(Path::new(&req.bundle)).await?;
        let (agent_spec, binds) = spec::to_agent_spec(&spec, &cid)?;
        let memory_limited = agent_spec.Linux.Resources.Memory.Limit > 0;
        let shares_pid_ns = spec::shares_pod_pid_ns(&spec);
        let mounts = rootfs_mounts(&req)?;
        let readonly = spec
            .root()
            .as_ref()
            .and_then(|r| r.readonly())
            .unwrap_or(false);
        let later_hooks = create_hooks(&spec, &cid, &req.bundle).await?;
        let annotations = spec.annotations().clone().unwrap_or_default();

        let guard = self.sandbox.lock().await;
        // The slot stays locked only while this Create boots the sandbox (a
        // failed first container tears it down again); a container joining a
        // running sandbox lets go at once, so State, Kill, Pids and Stats of
        // the others never wait behind its CreateContainer in the guest.
        let (sandbox, boot_guard) = match guard.as_ref() {
            Some(s) => {
                let s = s.clone();
                drop(guard);
                (s, None)
            }
            None => {
                let sb = self
                    .boot_for(&cid, &spec, &annotations, req.options.as_ref())
                    .await?;
                self.watch_vm(sb.clone());
                self.watch_oom(sb.clone());
                (sb, Some(guard))
            }
        };

        let t = std::time::Instant::now();
        let result = self
            .create_in_sandbox(
                &sandbox,
                ContainerMounts {
                    cid: cid.clone(),
                    rootfs: mounts,
                    bundle: req.bundle.clone().into(),
                    readonly,
                    binds,
                },
                (agent_spec, shares_pid_ns),
            )
            .await;
        crate::sandbox::phase(&sandbox.id, "create_container", t);
        match (result, boot_guard) {
            (Ok(()), Some(mut guard)) => *guard = Some(sandbox.clone()),
            (Ok(()), None) => {}
            (Err(e), Some(_guard)) => {
                if let Err(se) = sandbox.shutdown().await {
                    tracing::warn!(sandbox = %cid, error = %se, "tearing down after failed create");
                }
                return Err(e);
            }
            (Err(e), None) => return Err(e),
        }

        self.register_created(&sandbox, req, (memory_limited, shares_pid_ns, later_hooks))
            .await
    }

    /// A container id Create accepts: a plain name not in use.
    fn check_new_id(&self, cid: &str) -> Result<()> {
        if cid.is_empty() || cid.contains('/') || cid == "." || cid == ".." {
            return Err(Error::InvalidArgument(format!(
                "invalid container id {cid:?}"
            )));
        }
        if self.containers().contains_key(cid) {
            return Err(Error::AlreadyExists(format!(
                "container {cid:?} already exists"
            )));
        }
        Ok(())
    }

    /// Boots the pod's sandbox (VM, agent, share) for its first container,
    /// with the configuration file, the pod's annotations and its size. An
    /// app container whose pod is not here is refused.
    async fn boot_for(
        &self,
        cid: &str,
        spec: &oci_spec::runtime::Spec,
        annotations: &std::collections::HashMap<String, String>,
        options: Option<&Any>,
    ) -> Result<Arc<Sandbox>> {
        if annotations.get(cri::CONTAINER_TYPE).map(String::as_str) == Some(cri::CONTAINER) {
            let sid = annotations
                .get(cri::SANDBOX_ID)
                .cloned()
                .unwrap_or_default();
            return Err(Error::FailedPrecondition(format!(
                "sandbox {sid:?} of container {cid:?} is not running in this shim"
            )));
        }
        let t = std::time::Instant::now();
        let cfg = read_config(config_path_option(options))
            .await?
            .with_annotations(annotations)?;
        let host_cpus = std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1);
        // Without CRI's pod annotations (containerd 1.6, `ctr run`), the
        // first container's own limits size the VM: no hotplug right after.
        let mut pod = podsize::from_annotations(annotations)?;
        if pod == podsize::PodSize::default() {
            pod = podsize::PodSize::of(crate::vmsize::Needs::of_spec(spec));
        }
        let cfg = podsize::apply(&cfg, pod, host_cpus);
        crate::sandbox::phase(cid, "config", t);
        let span = tracing::info_span!("sandbox_boot", sandbox = %cid);
        let netns = crate::network::netns_path(spec);
        let cgroups_path = spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_ref())
            .and_then(|p| p.to_str());
        let cgroup = self.cgroup_target(&cfg, cgroups_path, cid)?;
        let sb = Arc::new(
            Sandbox::boot(
                cid,
                BootParams {
                    hostname: spec.hostname().as_deref().unwrap_or_default(),
                    netns: netns.as_deref(),
                    pod_pidns: false,
                    cgroup,
                },
                &self.run_root,
                &cfg,
                Seams {
                    hypervisor: self.hypervisor.as_ref(),
                    dialer: self.dialer.as_ref(),
                    mounter: self.mounter.clone(),
                },
            )
            .instrument(span)
            .await?,
        );
        Ok(sb)
    }

    /// Lists the created container, publishes TaskCreate and answers.
    async fn register_created(
        &self,
        sandbox: &Sandbox,
        req: api::CreateTaskRequest,
        (memory_limited, shares_pid_ns, later_hooks): (bool, bool, bool),
    ) -> Result<api::CreateTaskResponse> {
        let cid = req.id.clone();
        let stdio = Stdio {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let container = Arc::new(Container::new(&cid, &req.bundle, Process::new(stdio)));
        container
            .memory_limited
            .store(memory_limited, std::sync::atomic::Ordering::SeqCst);
        container
            .shares_pid_ns
            .store(shares_pid_ns, std::sync::atomic::Ordering::SeqCst);
        container
            .has_hooks
            .store(later_hooks, std::sync::atomic::Ordering::SeqCst);
        // Under the map's lock: the VM watcher lists the containers under it
        // once the VM's exit is recorded, so a container is either in that
        // list (its exit reported) or refused here, never left CREATED.
        let vm_gone = {
            let mut map = self.containers();
            let gone = sandbox.vm.exit_reason();
            if gone.is_none() {
                map.insert(cid.clone(), container);
            }
            gone
        };
        if vm_gone.is_some() {
            let _ = self.mounter.unmount_container(&sandbox.paths, &cid).await;
            return Err(crate::sandbox::vm_exited(sandbox.vm.as_ref(), vm_gone));
        }
        let pid = Self::task_pid(sandbox);
        tracing::info!(sandbox = %sandbox.id, container = %cid, "container created");
        self.events
            .publish(crate::events::TaskEvent::Create(TaskCreate {
                container_id: cid,
                bundle: req.bundle,
                rootfs: req.rootfs,
                io: MessageField::some(TaskIO {
                    stdin: req.stdin,
                    stdout: req.stdout,
                    stderr: req.stderr,
                    terminal: req.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    /// Grows the VM for the new container's limits on top of the others'
    /// (unless `static_sandbox_resource_mgmt`).
    async fn grow_at_create(&self, sandbox: &Sandbox, cid: &str, bundle: &Path) -> Result<()> {
        if sandbox.static_resources {
            return Ok(());
        }
        let mut live: Vec<(String, String)> = self
            .containers()
            .values()
            .map(|c| (c.id.clone(), c.bundle.clone()))
            .collect();
        live.push((cid.to_owned(), bundle.to_string_lossy().into_owned()));
        let mut size = sandbox.size.lock().await;
        let seams = crate::vmsize::Seams {
            sandbox: &sandbox.id,
            vm: sandbox.vm.as_ref(),
            agent: sandbox.agent.as_ref(),
        };
        crate::vmsize::grow_for_create(seams, &mut size, &live).await
    }

    async fn create_in_sandbox(
        &self,
        sandbox: &Sandbox,
        mounts: ContainerMounts,
        (agent_spec, sandbox_pidns): (protocols::oci::Spec, bool),
    ) -> Result<()> {
        // Sub-phases ("create_container.*"): where Create's time goes; the
        // bench lists them without adding them to the total again.
        let phase = |name: &str, t| crate::sandbox::phase(&sandbox.id, name, t);
        let cid = mounts.cid.clone();
        let t = std::time::Instant::now();
        self.grow_at_create(sandbox, &cid, &mounts.bundle).await?;
        phase("create_container.grow", t);
        let t = std::time::Instant::now();
        self.mounter.mount_container(&sandbox.paths, mounts).await?;
        phase("create_container.rootfs", t);
        let req = CreateContainerRequest {
            container_id: cid.clone(),
            exec_id: cid.clone(),
            OCI: MessageField::some(agent_spec),
            // The spec carries no pid entry: the agent joins the pod's
            // namespace when asked here, else creates one (as upstream).
            sandbox_pidns,
            ..Default::default()
        };
        crate::failpoint::gate(crate::failpoint::Phase::CreateContainer, &sandbox.id).await;
        let t = std::time::Instant::now();
        let rpc = async {
            sandbox
                .agent
                .create_container(req)
                .await
                .map_err(Error::from)
        };
        if let Err(e) = crate::sandbox::unless_vm_exits(sandbox.vm.as_ref(), rpc).await {
            let _ = self.mounter.unmount_container(&sandbox.paths, &cid).await;
            return Err(e);
        }
        phase("create_container.rpc", t);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::protobuf::Message;

    #[test]
    fn reads_config_path_from_runtime_options() {
        // runtimeoptions.v1.Options { type_url = "x", config_path = "/etc/k.toml" }
        let mut value = Vec::new();
        {
            let mut os = protocols::protobuf::CodedOutputStream::vec(&mut value);
            os.write_string(1, "x").expect("write");
            os.write_string(2, "/etc/k.toml").expect("write");
            os.flush().expect("flush");
        }
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            config_path_option(Some(&any)).as_deref(),
            Some("/etc/k.toml")
        );
        let other = Any {
            type_url: "containerd.runc.v1.Options".into(),
            ..Default::default()
        };
        assert_eq!(config_path_option(Some(&other)), None);
        assert_eq!(config_path_option(None), None);
        let _ = any.compute_size();
    }

    #[test]
    fn config_path_survives_a_binary_field() {
        // Found by fuzzing (fuzz/fuzz_targets/runtime_options.rs): a
        // length-delimited field that is not UTF-8 (e.g. config_body, 3)
        // made the whole option unreadable, so ConfigPath was ignored.
        let mut value = Vec::new();
        {
            let mut os = protocols::protobuf::CodedOutputStream::vec(&mut value);
            os.write_string(2, "/etc/k.toml").expect("write");
            os.write_bytes(3, &[0xff, 0xfe]).expect("write");
            os.flush().expect("flush");
        }
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            config_path_option(Some(&any)).as_deref(),
            Some("/etc/k.toml")
        );
    }
}
