//! The ttrpc services: `grpc.AgentService` and `grpc.Health`, mapped onto
//! the sandbox. Every error becomes a ttrpc status with a proper code; the
//! server keeps serving after any of them.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protocols::agent::*;
use protocols::agent_ttrpc::AgentService;
use protocols::health::{
    health_check_response::ServingStatus, CheckRequest, HealthCheckResponse, VersionCheckResponse,
};
use protocols::health_ttrpc::Health;
use protocols::protobuf::well_known_types::empty::Empty;
use ttrpc::r#async::TtrpcContext;

use crate::error::Error;
use crate::sandbox::Sandbox;

pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Delay between answering DestroySandbox and powering off, so the answer leaves.
const POWER_OFF_DELAY: Duration = Duration::from_millis(100);

pub struct Agent {
    pub sandbox: Arc<Sandbox>,
    /// Power the VM off after DestroySandbox (only as PID 1).
    pub power_off: bool,
}

type R<T> = ttrpc::Result<T>;

fn log_err<T>(rpc: &str, r: Result<T, Error>) -> R<T> {
    r.map_err(|e| {
        tracing::warn!(rpc, error = %e, "request failed");
        e.into()
    })
}

#[async_trait]
impl AgentService for Agent {
    async fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> R<Empty> {
        log_err(
            "CreateSandbox",
            self.sandbox
                .create_sandbox(&req)
                .await
                .map(|_| Empty::new()),
        )
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: DestroySandboxRequest) -> R<Empty> {
        tracing::info!("destroying sandbox");
        self.sandbox.destroy().await;
        if self.power_off {
            tokio::spawn(async {
                tokio::time::sleep(POWER_OFF_DELAY).await;
                crate::init::power_off();
            });
        }
        Ok(Empty::new())
    }

    async fn create_container(&self, _: &TtrpcContext, req: CreateContainerRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, exec = %req.exec_id, "CreateContainer");
        log_err(
            "CreateContainer",
            self.sandbox
                .create_container(req)
                .await
                .map(|_| Empty::new()),
        )
    }

    async fn start_container(&self, _: &TtrpcContext, req: StartContainerRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, "StartContainer");
        let r = async { self.sandbox.container(&req.container_id)?.start().await }.await;
        log_err("StartContainer", r.map(|_| Empty::new()))
    }

    async fn remove_container(&self, _: &TtrpcContext, req: RemoveContainerRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, timeout = req.timeout, "RemoveContainer");
        let timeout = (req.timeout > 0).then(|| Duration::from_secs(req.timeout.into()));
        log_err(
            "RemoveContainer",
            self.sandbox
                .remove_container(&req.container_id, timeout)
                .await
                .map(|_| Empty::new()),
        )
    }

    async fn exec_process(&self, _: &TtrpcContext, req: ExecProcessRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, exec = %req.exec_id, "ExecProcess");
        let r = async {
            let process = req
                .process
                .into_option()
                .ok_or_else(|| Error::InvalidArgument("no process".into()))?;
            let c = self.sandbox.container(&req.container_id)?;
            c.exec(&req.exec_id, process, &self.sandbox_reaper()).await
        }
        .await;
        log_err("ExecProcess", r.map(|_| Empty::new()))
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, exec = %req.exec_id, signal = req.signal, "SignalProcess");
        log_err(
            "SignalProcess",
            self.sandbox
                .signal(&req.container_id, &req.exec_id, req.signal)
                .map(|_| Empty::new()),
        )
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: WaitProcessRequest,
    ) -> R<WaitProcessResponse> {
        let c = log_err("WaitProcess", self.sandbox.container(&req.container_id))?;
        let p = log_err("WaitProcess", c.process(&req.exec_id))?;
        let status = p.wait().await;
        tracing::info!(container = %req.container_id, exec = %req.exec_id, status, "process exited");
        // An exec is forgotten once waited for and drained (else probes leak).
        c.forget_exec_when_drained(&req.exec_id);
        Ok(WaitProcessResponse {
            status,
            ..Default::default()
        })
    }

    async fn read_stdout(&self, _: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        let p = log_err(
            "ReadStdout",
            self.sandbox.process(&req.container_id, &req.exec_id),
        )?;
        let data = p.read_stdout(req.len).await?;
        Ok(ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    async fn read_stderr(&self, _: &TtrpcContext, req: ReadStreamRequest) -> R<ReadStreamResponse> {
        let p = log_err(
            "ReadStderr",
            self.sandbox.process(&req.container_id, &req.exec_id),
        )?;
        let data = p.read_stderr(req.len).await?;
        Ok(ReadStreamResponse {
            data,
            ..Default::default()
        })
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> R<WriteStreamResponse> {
        let r = async {
            self.sandbox
                .process(&req.container_id, &req.exec_id)?
                .write_stdin(&req.data)
                .await
        }
        .await;
        let len = log_err("WriteStdin", r)?;
        Ok(WriteStreamResponse {
            len,
            ..Default::default()
        })
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: CloseStdinRequest) -> R<Empty> {
        let p = log_err(
            "CloseStdin",
            self.sandbox.process(&req.container_id, &req.exec_id),
        )?;
        p.close_stdin().await;
        Ok(Empty::new())
    }

    async fn pause_container(&self, _: &TtrpcContext, req: PauseContainerRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, "PauseContainer");
        let r = async { self.sandbox.container(&req.container_id)?.pause(true).await }.await;
        log_err("PauseContainer", r.map(|_| Empty::new()))
    }

    async fn resume_container(&self, _: &TtrpcContext, req: ResumeContainerRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, "ResumeContainer");
        let r = async {
            self.sandbox
                .container(&req.container_id)?
                .pause(false)
                .await
        }
        .await;
        log_err("ResumeContainer", r.map(|_| Empty::new()))
    }

    async fn update_container(&self, _: &TtrpcContext, req: UpdateContainerRequest) -> R<Empty> {
        tracing::info!(container = %req.container_id, "UpdateContainer");
        let r = async {
            let c = self.sandbox.container(&req.container_id)?;
            match req.resources.into_option() {
                Some(res) => c.update(res).await,
                None => Ok(()),
            }
        }
        .await;
        log_err("UpdateContainer", r.map(|_| Empty::new()))
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: StatsContainerRequest,
    ) -> R<StatsContainerResponse> {
        let r = async {
            let c = self.sandbox.container(&req.container_id)?;
            let cgroup = c.stats().await?;
            // Containers share the VM's network namespace: the VM's interfaces.
            let network = crate::blocking::run(|| Ok(crate::system::network_stats())).await?;
            Ok((cgroup, network))
        }
        .await;
        let (cgroup_stats, network_stats) = log_err("StatsContainer", r)?;
        Ok(StatsContainerResponse {
            cgroup_stats: Some(cgroup_stats).into(),
            network_stats,
            ..Default::default()
        })
    }

    /// The container's pids (guest pid namespace) as a JSON array, whatever the format.
    async fn list_processes(
        &self,
        _: &TtrpcContext,
        req: ListProcessesRequest,
    ) -> R<ListProcessesResponse> {
        let r = async { self.sandbox.container(&req.container_id)?.pids().await }.await;
        let pids = log_err("ListProcesses", r)?;
        let list: Vec<String> = pids.iter().map(i32::to_string).collect();
        let process_list = format!("[{}]", list.join(",")).into_bytes();
        Ok(ListProcessesResponse {
            process_list,
            ..Default::default()
        })
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: GetOOMEventRequest) -> R<OOMEvent> {
        let container_id = self.sandbox.next_oom().await;
        tracing::info!(container = %container_id, "OOM kill");
        Ok(OOMEvent {
            container_id,
            ..Default::default()
        })
    }

    async fn tty_win_resize(&self, _: &TtrpcContext, req: TtyWinResizeRequest) -> R<Empty> {
        let r = self
            .sandbox
            .process(&req.container_id, &req.exec_id)
            .and_then(|p| p.resize(req.row, req.column));
        log_err("TtyWinResize", r.map(|_| Empty::new()))
    }

    async fn set_guest_date_time(
        &self,
        _: &TtrpcContext,
        req: SetGuestDateTimeRequest,
    ) -> R<Empty> {
        let ts = nix::sys::time::TimeSpec::new(req.Sec, req.Usec * 1000);
        let r = nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
            .map_err(|e| Error::sys("clock_settime", e));
        log_err("SetGuestDateTime", r.map(|_| Empty::new()))
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        req: GuestDetailsRequest,
    ) -> R<GuestDetailsResponse> {
        let details = AgentDetails {
            version: AGENT_VERSION.to_string(),
            init_daemon: self.power_off,
            storage_handlers: crate::mounts::STORAGE_DRIVERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            ..Default::default()
        };
        let mem = std::path::Path::new(crate::system::MEMORY_DIR);
        Ok(GuestDetailsResponse {
            agent_details: Some(details).into(),
            mem_block_size_bytes: if req.mem_block_size {
                crate::system::memory_block_size(mem)
            } else {
                0
            },
            support_mem_hotplug_probe: req.mem_hotplug_probe
                && crate::system::memory_probe_supported(mem),
            ..Default::default()
        })
    }

    /// Onlines hot-plugged vCPUs (`nb_cpus` of them, waiting for them to appear
    /// when `wait`) and, unless `cpu_only`, every offline memory block.
    async fn online_cpu_mem(&self, _: &TtrpcContext, req: OnlineCPUMemRequest) -> R<Empty> {
        tracing::info!(
            nb_cpus = req.nb_cpus,
            cpu_only = req.cpu_only,
            wait = req.wait,
            "OnlineCPUMem"
        );
        let r = async {
            let cpus = std::path::Path::new(crate::system::CPU_DIR);
            let nb = req.nb_cpus;
            let onlined = if req.wait {
                crate::system::online_cpus(cpus, nb).await?
            } else {
                crate::blocking::run(move || crate::system::online_cpus_once(cpus, nb)).await?
            };
            let blocks = if req.cpu_only {
                0
            } else {
                let memory = std::path::Path::new(crate::system::MEMORY_DIR);
                crate::blocking::run(move || crate::system::online_memory(memory)).await?
            };
            tracing::info!(cpus = onlined, memory_blocks = blocks, "onlined");
            Ok(Empty::new())
        }
        .await;
        log_err("OnlineCPUMem", r)
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> R<protocols::types::Interface> {
        let iface = req.interface.into_option().unwrap_or_default();
        log_err(
            "UpdateInterface",
            crate::network::update_interface(&iface).await,
        )
    }

    async fn update_routes(&self, _: &TtrpcContext, req: UpdateRoutesRequest) -> R<Routes> {
        let wanted = req.routes.into_option().unwrap_or_default().Routes;
        let r = crate::network::update_routes(&wanted).await;
        log_err("UpdateRoutes", r.map(routes_message))
    }

    async fn add_arp_neighbors(&self, _: &TtrpcContext, req: AddARPNeighborsRequest) -> R<Empty> {
        let wanted = req.neighbors.into_option().unwrap_or_default().ARPNeighbors;
        let r = crate::network::add_arp_neighbors(&wanted).await;
        log_err("AddARPNeighbors", r.map(|()| Empty::new()))
    }

    async fn list_interfaces(&self, _: &TtrpcContext, _: ListInterfacesRequest) -> R<Interfaces> {
        let r = crate::network::list_interfaces().await;
        log_err(
            "ListInterfaces",
            r.map(|interfaces| protocols::agent::Interfaces {
                Interfaces: interfaces,
                ..Default::default()
            }),
        )
    }

    async fn list_routes(&self, _: &TtrpcContext, _: ListRoutesRequest) -> R<Routes> {
        let r = crate::network::list_routes().await;
        log_err("ListRoutes", r.map(routes_message))
    }
}

fn routes_message(routes: Vec<protocols::types::Route>) -> Routes {
    Routes {
        Routes: routes,
        ..Default::default()
    }
}

impl Agent {
    fn sandbox_reaper(&self) -> crate::reaper::Reaper {
        self.sandbox.reaper()
    }
}

pub struct HealthService;

#[async_trait]
impl Health for HealthService {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> R<HealthCheckResponse> {
        Ok(HealthCheckResponse {
            status: ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }

    async fn version(&self, _: &TtrpcContext, _: CheckRequest) -> R<VersionCheckResponse> {
        Ok(VersionCheckResponse {
            agent_version: AGENT_VERSION.to_string(),
            grpc_version: "ttrpc".to_string(),
            ..Default::default()
        })
    }
}
