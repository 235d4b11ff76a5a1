//! Shim RPC overhead on fakes: the Task service of the shim library with
//! the fake hypervisor and fake agent, called through the `Task` trait as
//! the ttrpc server would (no socket). Per call latency of
//! Create/Start/State/Exec/Kill/Wait/Delete and the process CPU time of one
//! whole pod lifecycle (create → start → exec → kill → wait → delete).
//! A timing loop, not criterion: kata-bench runs it in the same process.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_client::fake::FakeAgent;
use agent_client::{Address, Agent};
use anyhow::{Context, Result};
use async_trait::async_trait;
use containerd_shim_kata_v2::events::{EventSink, TaskEvent};
use containerd_shim_kata_v2::sandbox::AgentDialer;
use containerd_shim_kata_v2::service::TaskService;
use hypervisor::FakeHypervisor;
use protocols::containerd::api;
use protocols::containerd::shim_async::Task;
use protocols::containerd::ttrpc::r#async::TtrpcContext;
use protocols::protobuf::well_known_types::any::Any;

struct NoEvents;

#[async_trait]
impl EventSink for NoEvents {
    async fn publish(&self, _event: TaskEvent) {}
}

struct Dialer(FakeAgent);

#[async_trait]
impl AgentDialer for Dialer {
    async fn dial(
        &self,
        _addr: &Address,
        _timeout: Duration,
        _tail: &(dyn Fn() -> String + Send + Sync),
    ) -> agent_client::Result<Box<dyn Agent>> {
        Ok(Box::new(self.0.clone()))
    }
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: Default::default(),
        timeout_nano: 0,
        connection_data: Default::default(),
    }
}

fn config_option(path: &Path) -> Result<Any> {
    let mut value = Vec::new();
    {
        let mut os = protocols::protobuf::CodedOutputStream::vec(&mut value);
        // runtimeoptions.v1.Options.config_path = 2
        os.write_string(2, &path.to_string_lossy())?;
        os.flush()?;
    }
    Ok(Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    })
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Per-RPC latencies (µs, by RPC name) and CPU ms per pod lifecycle.
pub struct RpcResults {
    pub calls_us: BTreeMap<String, Vec<f64>>,
    pub cpu_ms_per_pod: f64,
    pub lifecycles: usize,
}

/// Runs `n` pod lifecycles on fakes under `work`.
pub fn measure(work: &Path, n: usize) -> Result<RpcResults> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(lifecycles(work, n))
}

async fn lifecycles(work: &Path, n: usize) -> Result<RpcResults> {
    std::fs::create_dir_all(work)?;
    let conf = work.join("kata.toml");
    std::fs::write(
        &conf,
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n",
    )?;
    let options = config_option(&conf)?;
    let mut calls: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut time = |name: &str, t: Instant| {
        calls
            .entry(name.to_owned())
            .or_default()
            .push(t.elapsed().as_secs_f64() * 1e6);
    };
    let process = serde_json::json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    let cpu0 = cpu_seconds();
    for i in 0..n {
        let agent = FakeAgent::new();
        let svc = TaskService::new(
            "kata-bench",
            work.join(format!("run-{i}")),
            Arc::new(FakeHypervisor::default()),
            Arc::new(Dialer(agent.clone())),
            Arc::new(NoEvents),
            Arc::new(containerd_shim_kata_v2::testing::RecordingMounter::default()),
        );
        let id = format!("pod{i}");
        let bundle = work.join(format!("bundle-{i}"));
        std::fs::create_dir_all(bundle.join("rootfs"))?;
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sleep", "1"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
        });
        std::fs::write(bundle.join("config.json"), spec.to_string())?;
        let c = ctx();

        let t = Instant::now();
        svc.create(
            &c,
            api::CreateTaskRequest {
                id: id.clone(),
                bundle: bundle.to_string_lossy().into_owned(),
                options: Some(options.clone()).into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("create: {e:?}"))?;
        time("Create", t);
        let start = |exec: &str| api::StartRequest {
            id: id.clone(),
            exec_id: exec.into(),
            ..Default::default()
        };
        let t = Instant::now();
        svc.start(&c, start(""))
            .await
            .map_err(|e| anyhow::anyhow!("start: {e:?}"))?;
        time("Start", t);
        let t = Instant::now();
        svc.state(
            &c,
            api::StateRequest {
                id: id.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("state: {e:?}"))?;
        time("State", t);
        let t = Instant::now();
        svc.exec(
            &c,
            api::ExecProcessRequest {
                id: id.clone(),
                exec_id: "e".into(),
                spec: Some(Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: process.to_string().into_bytes(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("exec: {e:?}"))?;
        time("Exec", t);
        let t = Instant::now();
        svc.start(&c, start("e"))
            .await
            .map_err(|e| anyhow::anyhow!("start exec: {e:?}"))?;
        time("Start (exec)", t);
        for exec in ["e", ""] {
            let t = Instant::now();
            svc.kill(
                &c,
                api::KillRequest {
                    id: id.clone(),
                    exec_id: exec.into(),
                    signal: 9,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("kill: {e:?}"))?;
            time("Kill", t);
            agent.exit_process(&id, exec, 137);
            let t = Instant::now();
            tokio::time::timeout(
                Duration::from_secs(5),
                svc.wait(
                    &c,
                    api::WaitRequest {
                        id: id.clone(),
                        exec_id: exec.into(),
                        ..Default::default()
                    },
                ),
            )
            .await
            .context("wait timed out")?
            .map_err(|e| anyhow::anyhow!("wait: {e:?}"))?;
            time("Wait (exited)", t);
            let t = Instant::now();
            svc.delete(
                &c,
                api::DeleteRequest {
                    id: id.clone(),
                    exec_id: exec.into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| anyhow::anyhow!("delete: {e:?}"))?;
            time(
                if exec.is_empty() {
                    "Delete"
                } else {
                    "Delete (exec)"
                },
                t,
            );
        }
        let _ = std::fs::remove_dir_all(&bundle);
    }
    let cpu = cpu_seconds() - cpu0;
    Ok(RpcResults {
        calls_us: calls,
        cpu_ms_per_pod: cpu * 1000.0 / n.max(1) as f64,
        lifecycles: n,
    })
}
