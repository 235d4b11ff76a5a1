//! The Task service on fakes: every RPC, allowed and refused transitions,
//! events in containerd's order, teardown on failure and on VM death.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use agent_client::fake::{Call as AgentCall, FakeAgent};
use hypervisor::fake::{Call as VmCall, FakeHypervisor};
use protocols::containerd::api;
use protocols::containerd::shim_async::Task;
use protocols::containerd::ttrpc::Code;
use protocols::protobuf::well_known_types::any::Any;

use super::TaskService;
use crate::error::{Error, Result};
use crate::testing::{ttrpc_context, FakeDialer, RecordingEvents, RecordingMounter};

#[path = "tests_pid.rs"]
mod pid;

type Events = RecordingEvents;
type Mounts = RecordingMounter;

pub(super) struct Rig {
    pub(super) svc: Arc<TaskService>,
    pub(super) hv: FakeHypervisor,
    pub(super) agent: FakeAgent,
    pub(super) events: Arc<Events>,
    pub(super) mounts: Arc<Mounts>,
    pub(super) dir: tempfile::TempDir,
}

fn ctx() -> protocols::containerd::ttrpc::r#async::TtrpcContext {
    ttrpc_context()
}

pub(super) fn rig() -> Rig {
    rig_in("test-ns")
}

/// The Task service on fakes, serving containerd namespace `namespace`.
pub(super) fn rig_in(namespace: &str) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let hv = FakeHypervisor::default();
    let agent = FakeAgent::new();
    let events = Arc::new(Events::default());
    let mounts = Arc::new(Mounts::default());
    std::fs::write(
        dir.path().join("kata.toml"),
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n",
    )
    .expect("config");
    let svc = TaskService::new(
        namespace,
        dir.path().join("run"),
        Arc::new(hv.clone()),
        Arc::new(FakeDialer(agent.clone())),
        events.clone(),
        mounts.clone(),
    );
    Rig {
        svc: Arc::new(svc),
        hv,
        agent,
        events,
        mounts,
        dir,
    }
}

impl Rig {
    /// The rig with its service reconfigured (`with_kill_timeouts`, ...).
    pub(super) fn map_svc(self, f: impl FnOnce(TaskService) -> TaskService) -> Rig {
        let svc = Arc::into_inner(self.svc).expect("the rig's service is not shared yet");
        Rig {
            svc: Arc::new(f(svc)),
            ..self
        }
    }

    pub(super) fn bundle(&self, id: &str, annotations: serde_json::Value) -> String {
        let b = self.dir.path().join(format!("bundle-{id}"));
        std::fs::create_dir_all(b.join("rootfs")).expect("bundle");
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sleep", "1"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
            "annotations": annotations,
        });
        std::fs::write(b.join("config.json"), spec.to_string()).expect("spec");
        b.to_string_lossy().into_owned()
    }

    pub(super) fn options(&self) -> Any {
        let mut value = Vec::new();
        {
            let mut os = protocols::protobuf::CodedOutputStream::vec(&mut value);
            os.write_string(2, &self.dir.path().join("kata.toml").to_string_lossy())
                .expect("write");
            os.flush().expect("flush");
        }
        Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        }
    }

    pub(super) async fn create(
        &self,
        id: &str,
        annotations: serde_json::Value,
    ) -> Result<api::CreateTaskResponse> {
        let req = api::CreateTaskRequest {
            id: id.into(),
            bundle: self.bundle(id, annotations),
            options: Some(self.options()).into(),
            ..Default::default()
        };
        self.svc.do_create(req).await
    }

    pub(super) async fn start(&self, id: &str, exec: &str) -> Result<api::StartResponse> {
        self.svc
            .do_start(api::StartRequest {
                id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            })
            .await
    }

    pub(super) async fn delete(&self, id: &str, exec: &str) -> Result<api::DeleteResponse> {
        self.svc
            .do_delete(api::DeleteRequest {
                id: id.into(),
                exec_id: exec.into(),
                ..Default::default()
            })
            .await
    }

    pub(super) async fn wait(&self, id: &str, exec: &str) -> u32 {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        tokio::time::timeout(Duration::from_secs(5), self.svc.do_wait(req))
            .await
            .expect("wait timed out")
            .expect("wait")
            .exit_status
    }

    pub(super) async fn status(&self, id: &str, exec: &str) -> api::Status {
        let req = api::StateRequest {
            id: id.into(),
            exec_id: exec.into(),
            ..Default::default()
        };
        self.svc
            .do_state(req)
            .await
            .expect("state")
            .status
            .enum_value_or_default()
    }

    pub(super) fn run_dir_empty(&self) -> bool {
        std::fs::read_dir(self.dir.path().join("run"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }
}

/// The status code containerd receives for `e`.
pub(super) fn code(e: Error) -> Code {
    match protocols::ttrpc::Error::from(e) {
        protocols::ttrpc::Error::RpcStatus(s) => s.code(),
        other => panic!("not a status: {other:?}"),
    }
}

/// `r` failed with the code containerd acts on (NotFound, ...).
fn assert_code(r: Result<impl std::fmt::Debug>, want: Code) {
    let e = r.expect_err("should fail");
    let shown = e.to_string();
    assert_eq!(code(e), want, "{shown}");
}

#[tokio::test]
async fn lifecycle_publishes_events_in_order_and_cleans_up() {
    let r = rig();
    let created = r.create("c1", serde_json::json!({})).await.expect("create");
    assert_eq!(r.status("c1", "").await, api::Status::CREATED);
    assert!(
        r.agent
            .calls()
            .iter()
            .any(|c| matches!(c, AgentCall::CreateSandbox(req) if !req.sandbox_pidns)),
        "the sandbox container owns the pod's pid namespace: the agent holds none"
    );
    r.start("c1", "").await.expect("start");
    assert_eq!(r.status("c1", "").await, api::Status::RUNNING);
    r.agent.push_stdout("c1", "", b"hello");
    r.agent.exit_process("c1", "", 7);
    assert_eq!(r.wait("c1", "").await, 7);
    assert_eq!(r.status("c1", "").await, api::Status::STOPPED);
    let exit = r.events.last("/tasks/exit").expect("exit event");
    assert!(
        exit.contains("id: \"c1\"") && exit.contains("exit_status: 7"),
        "{exit}"
    );
    let del = r.delete("c1", "").await.expect("delete");
    assert_eq!(del.exit_status, 7);
    assert_eq!(del.pid, created.pid);
    assert_eq!(
        r.events.topics(),
        vec![
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    assert!(r
        .agent
        .calls()
        .iter()
        .any(|c| matches!(c, AgentCall::DestroySandbox)));
    assert!(r
        .hv
        .calls()
        .iter()
        .any(|c| matches!(c, VmCall::Stop { .. })));
    let mounts = r.mounts.calls();
    let kinds: Vec<&str> = mounts.iter().filter_map(|m| m.split(' ').next()).collect();
    assert_eq!(
        kinds,
        vec!["prepare", "mount", "unmount", "teardown"],
        "{mounts:?}"
    );
    assert!(r.run_dir_empty(), "sandbox directory removed");
    r.svc
        .do_shutdown(api::ShutdownRequest::default())
        .await
        .expect("shutdown");
    tokio::time::timeout(Duration::from_secs(1), r.svc.exit.notified())
        .await
        .expect("exit signalled");
}

#[tokio::test]
async fn refuses_what_the_state_machine_refuses() {
    let r = rig();
    assert_code(r.start("ghost", "").await, Code::NOT_FOUND);
    assert_code(r.delete("ghost", "").await, Code::NOT_FOUND);
    r.create("c1", serde_json::json!({})).await.expect("create");
    assert_code(
        r.create("c1", serde_json::json!({})).await,
        Code::ALREADY_EXISTS,
    );
    let pause = api::PauseRequest {
        id: "c1".into(),
        ..Default::default()
    };
    assert_code(
        r.svc.do_pause(pause.clone()).await,
        Code::FAILED_PRECONDITION,
    );
    r.start("c1", "").await.expect("start");
    assert_code(r.start("c1", "").await, Code::FAILED_PRECONDITION);
    assert_code(r.delete("c1", "").await, Code::FAILED_PRECONDITION);
    let resume = api::ResumeRequest {
        id: "c1".into(),
        ..Default::default()
    };
    assert_code(
        r.svc.do_resume(resume.clone()).await,
        Code::FAILED_PRECONDITION,
    );
    r.svc.do_pause(pause.clone()).await.expect("pause");
    assert_eq!(r.status("c1", "").await, api::Status::PAUSED);
    assert_code(r.svc.do_pause(pause).await, Code::FAILED_PRECONDITION);
    r.svc.do_resume(resume).await.expect("resume");
    // The sandbox container pauses the whole VM.
    assert!(r
        .hv
        .calls()
        .iter()
        .any(|c| matches!(c, VmCall::Pause { .. })));
    assert!(r
        .hv
        .calls()
        .iter()
        .any(|c| matches!(c, VmCall::Resume { .. })));
    let topics = r.events.topics();
    assert!(
        topics.contains(&"/tasks/paused".to_owned())
            && topics.contains(&"/tasks/resumed".to_owned())
    );
    // Shutdown is ignored while a container remains.
    r.svc
        .do_shutdown(api::ShutdownRequest::default())
        .await
        .expect("shutdown");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), r.svc.exit.notified())
            .await
            .is_err()
    );
    r.agent.exit_process("c1", "", 0);
    r.wait("c1", "").await;
    let kill = api::KillRequest {
        id: "c1".into(),
        signal: 9,
        ..Default::default()
    };
    assert_code(r.svc.do_kill(kill).await, Code::NOT_FOUND);
    let exec = api::ExecProcessRequest {
        id: "c1".into(),
        exec_id: "e".into(),
        ..Default::default()
    };
    assert_code(r.svc.do_exec(exec).await, Code::FAILED_PRECONDITION);
}

pub(super) fn exec_req(id: &str, exec: &str) -> api::ExecProcessRequest {
    let process =
        serde_json::json!({"args": ["echo", "hi"], "cwd": "/", "user": {"uid": 0, "gid": 0}});
    api::ExecProcessRequest {
        id: id.into(),
        exec_id: exec.into(),
        spec: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
            value: process.to_string().into_bytes(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_runs_and_reports_its_own_exit() {
    let r = rig();
    r.create("c1", serde_json::json!({})).await.expect("create");
    r.start("c1", "").await.expect("start");
    r.svc.do_exec(exec_req("c1", "e1")).await.expect("exec");
    assert_code(
        r.svc.do_exec(exec_req("c1", "e1")).await,
        Code::ALREADY_EXISTS,
    );
    assert_eq!(r.status("c1", "e1").await, api::Status::CREATED);
    r.start("c1", "e1").await.expect("start exec");
    assert!(r
        .agent
        .calls()
        .iter()
        .any(|c| matches!(c, AgentCall::ExecProcess(req) if req.exec_id == "e1")));
    let kill = api::KillRequest {
        id: "c1".into(),
        exec_id: "e1".into(),
        signal: 15,
        ..Default::default()
    };
    r.svc.do_kill(kill).await.expect("kill exec");
    assert!(r.agent.calls().iter().any(
        |c| matches!(c, AgentCall::SignalProcess { exec_id, signal: 15, .. } if exec_id == "e1")
    ));
    r.agent.exit_process("c1", "e1", 143);
    assert_eq!(r.wait("c1", "e1").await, 143);
    let exit = r.events.last("/tasks/exit").expect("exit");
    assert!(
        exit.contains("id: \"e1\""),
        "exec exit carries the exec id: {exit}"
    );
    assert_eq!(
        r.status("c1", "").await,
        api::Status::RUNNING,
        "init unaffected"
    );
    r.delete("c1", "e1").await.expect("delete exec");
    assert_code(r.delete("c1", "e1").await, Code::NOT_FOUND);
    let topics = r.events.topics();
    assert!(
        topics.contains(&"/tasks/exec-added".to_owned())
            && topics.contains(&"/tasks/exec-started".to_owned())
    );
    // Kill with `all` reaches every process: the agent's empty exec id.
    let all = api::KillRequest {
        id: "c1".into(),
        signal: 9,
        all: true,
        ..Default::default()
    };
    r.svc.do_kill(all).await.expect("kill all");
    assert!(r.agent.calls().iter().any(
        |c| matches!(c, AgentCall::SignalProcess { exec_id, signal: 9, .. } if exec_id.is_empty())
    ));
}

#[tokio::test]
async fn vm_death_reports_every_live_process_exited() {
    let r = rig();
    r.create("c1", serde_json::json!({})).await.expect("create");
    r.start("c1", "").await.expect("start");
    r.hv.vms()[0].exit("killed");
    assert_eq!(r.wait("c1", "").await, 137);
    assert!(r.events.topics().contains(&"/tasks/exit".to_owned()));
    // containerd then deletes; that works without a VM.
    r.delete("c1", "").await.expect("delete after VM death");
    assert!(r.run_dir_empty());
}

#[tokio::test]
async fn daemon_exits_after_vm_death_when_containerd_never_comes() {
    let r = rig().map_svc(|s| s.with_vm_gone_linger(Duration::from_millis(200)));
    let exit = r.svc.exit.clone();
    let exited = exit.notified();
    tokio::pin!(exited);
    exited.as_mut().enable();
    r.create("c1", serde_json::json!({})).await.expect("create");
    r.start("c1", "").await.expect("start");
    // A live VM keeps the daemon up.
    assert!(
        tokio::time::timeout(Duration::from_millis(400), exited.as_mut())
            .await
            .is_err(),
        "daemon exited with its VM running"
    );
    r.hv.vms()[0].exit("killed");
    assert_eq!(r.wait("c1", "").await, 137);
    tokio::time::timeout(Duration::from_secs(5), exited)
        .await
        .expect("daemon exits after its VM died and nobody came");
}

#[tokio::test]
async fn failed_boot_or_create_leaves_nothing() {
    let r = rig();
    r.hv.fail_next_launch(hypervisor::Error::InvalidConfig(
        "kernel /k does not exist".into(),
    ));
    let e = r
        .create("c1", serde_json::json!({}))
        .await
        .expect_err("launch fails");
    assert!(matches!(e, Error::Hypervisor(_)), "{e:?}");
    assert!(e.to_string().contains("/k"), "{e}");
    assert!(r.run_dir_empty(), "nothing left after failed launch");
    r.agent.fail_next(
        "CreateContainer",
        protocols::ttrpc::Code::INVALID_ARGUMENT,
        "bad spec",
    );
    let e = r
        .create("c1", serde_json::json!({}))
        .await
        .expect_err("agent refuses");
    assert!(e.to_string().contains("bad spec"), "{e}");
    assert!(
        r.hv.calls()
            .iter()
            .any(|c| matches!(c, VmCall::Stop { .. })),
        "VM stopped"
    );
    assert!(r.run_dir_empty());
    // And the service still works afterwards.
    r.create("c1", serde_json::json!({}))
        .await
        .expect("create after failures");
}

#[tokio::test]
async fn app_container_needs_its_pod_and_joins_it() {
    let r = rig();
    let app = serde_json::json!({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod"});
    assert_code(
        r.create("app", app.clone()).await,
        Code::FAILED_PRECONDITION,
    );
    r.create(
        "pod",
        serde_json::json!({"io.kubernetes.cri.container-type": "sandbox"}),
    )
    .await
    .expect("pod");
    r.create("app", app).await.expect("app joins");
    assert_eq!(
        r.hv.calls()
            .iter()
            .filter(|c| matches!(c, VmCall::Launch { .. }))
            .count(),
        1
    );
    // Pausing an app container uses the agent's freezer, not the VM.
    r.start("app", "").await.expect("start");
    r.svc
        .do_pause(api::PauseRequest {
            id: "app".into(),
            ..Default::default()
        })
        .await
        .expect("pause");
    assert!(r
        .agent
        .calls()
        .iter()
        .any(|c| matches!(c, AgentCall::PauseContainer { container_id } if container_id == "app")));
    assert!(!r
        .hv
        .calls()
        .iter()
        .any(|c| matches!(c, VmCall::Pause { .. })));
}

#[tokio::test]
async fn bad_inputs_get_typed_errors() {
    let r = rig();
    let missing = api::CreateTaskRequest {
        id: "x".into(),
        bundle: "/nonexistent".into(),
        ..Default::default()
    };
    let e = r.svc.do_create(missing).await.expect_err("missing bundle");
    assert!(format!("{e:?}").starts_with("Io"), "{e:?}");
    let b = r.bundle("y", serde_json::json!({}));
    std::fs::write(PathBuf::from(&b).join("config.json"), "{not json").expect("write");
    let bad = api::CreateTaskRequest {
        id: "y".into(),
        bundle: b.clone(),
        ..Default::default()
    };
    assert_code(r.svc.do_create(bad).await, Code::INVALID_ARGUMENT);
    let b = r.bundle("z", serde_json::json!({}));
    let weird = api::CreateTaskRequest {
        id: "z".into(),
        bundle: b,
        rootfs: vec![protocols::containerd::types::mount::Mount {
            type_: "zfs".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    assert_code(r.svc.do_create(weird).await, Code::INVALID_ARGUMENT);
    assert!(r.run_dir_empty(), "no VM started for bad input");
    assert!(r.hv.calls().is_empty());
}

#[tokio::test]
async fn task_trait_maps_errors_to_codes() {
    let r = rig();
    let e = Task::start(
        r.svc.as_ref(),
        &ctx(),
        api::StartRequest {
            id: "ghost".into(),
            ..Default::default()
        },
    )
    .await
    .expect_err("unknown");
    match e {
        protocols::containerd::ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), protocols::containerd::ttrpc::Code::NOT_FOUND);
            assert!(s.message().contains("ghost"));
        }
        other => panic!("{other:?}"),
    }
    let e = Task::checkpoint(
        r.svc.as_ref(),
        &ctx(),
        api::CheckpointTaskRequest::default(),
    )
    .await
    .expect_err("unimplemented");
    match e {
        protocols::containerd::ttrpc::Error::RpcStatus(s) => {
            assert_eq!(s.code(), protocols::containerd::ttrpc::Code::UNIMPLEMENTED)
        }
        other => panic!("{other:?}"),
    }
}

/// Update grows the VM before the agent applies limits: vCPUs (quota/period
/// rounded up) then a 128 MiB-aligned DIMM, each onlined by the agent; past
/// the configured maxima it is clamped, not refused.
#[tokio::test]
async fn update_hotplugs_up_to_the_configured_maxima() {
    let r = rig();
    std::fs::write(
        r.dir.path().join("kata.toml"),
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\ndefault_vcpus = 1\ndefault_memory = 256\n\
         default_maxvcpus = 2\ndefault_maxmemory = 512\nmemory_slots = 2\n",
    )
    .expect("config");
    r.create("c1", serde_json::json!({})).await.expect("create");
    r.start("c1", "").await.expect("start");
    assert_eq!(
        r.hv.options()[0].max_vcpus,
        Some(2),
        "maxvcpus reaches launch"
    );
    let update = |json: &str| api::UpdateTaskRequest {
        id: "c1".into(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: json.as_bytes().to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    // 1.5 CPUs → 2 vCPUs on top of the guest's 1, clamped to the maximum 2;
    // 300 MiB on top of the guest's 256 → one DIMM of the 256 MiB of room.
    r.svc
        .do_update(update(
            r#"{"cpu":{"quota":150000,"period":100000},"memory":{"limit":314572800}}"#,
        ))
        .await
        .expect("update");
    let vm: Vec<VmCall> =
        r.hv.calls()
            .into_iter()
            .filter(|c| matches!(c, VmCall::ResizeVcpus { .. } | VmCall::AddMemory { .. }))
            .collect();
    assert_eq!(
        vm,
        [
            VmCall::ResizeVcpus {
                id: "c1".into(),
                count: 2
            },
            VmCall::AddMemory {
                id: "c1".into(),
                size_mib: 256
            }
        ]
    );
    let agent: Vec<String> = r
        .agent
        .calls()
        .iter()
        .filter_map(|c| match c {
            AgentCall::OnlineCpuMem(o) => {
                Some(format!("online cpus={} cpu_only={}", o.nb_cpus, o.cpu_only))
            }
            AgentCall::UpdateContainer(_) => Some("update".into()),
            _ => None,
        })
        .collect();
    assert_eq!(
        agent,
        [
            "online cpus=1 cpu_only=true",
            "online cpus=0 cpu_only=false",
            "update"
        ]
    );

    // 8 CPUs and 4 GiB: the VM is at both maxima already: no call.
    r.svc
        .do_update(update(
            r#"{"cpu":{"quota":800000,"period":100000},"memory":{"limit":4294967296}}"#,
        ))
        .await
        .expect("clamped update still applies");
    let grows: Vec<VmCall> =
        r.hv.calls()
            .into_iter()
            .filter(|c| matches!(c, VmCall::ResizeVcpus { .. } | VmCall::AddMemory { .. }))
            .collect();
    assert_eq!(grows.len(), 2, "{grows:?}");
    // Without limits nothing grows.
    r.svc.do_update(update("{}")).await.expect("no limits");
    assert_eq!(
        r.hv.calls()
            .iter()
            .filter(|c| matches!(c, VmCall::ResizeVcpus { .. } | VmCall::AddMemory { .. }))
            .count(),
        2
    );
}

/// The VM grows at a container's Create for the limits of its spec (as
/// Kata's runtime does), and Update counts them: the VM has 1 vCPU (the
/// guest's share), app's spec has a 1-CPU quota → 2 vCPUs at its Create; the
/// pod updated to 1 CPU asks for 3, clamped to the maximum 2 → no call.
#[tokio::test]
async fn update_counts_the_limits_containers_were_created_with() {
    let r = rig();
    std::fs::write(
        r.dir.path().join("kata.toml"),
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\ndefault_vcpus = 1\ndefault_maxvcpus = 2\n",
    )
    .expect("config");
    r.create("pod", serde_json::json!({})).await.expect("pod");
    r.start("pod", "").await.expect("start");
    let app = r.bundle(
        "app",
        serde_json::json!({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod"}),
    );
    let path = PathBuf::from(&app).join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    spec["linux"] = serde_json::json!({"resources": {"cpu": {"quota": 100000, "period": 100000}}});
    std::fs::write(&path, spec.to_string()).expect("write");
    let req = api::CreateTaskRequest {
        id: "app".into(),
        bundle: app,
        options: Some(r.options()).into(),
        ..Default::default()
    };
    r.svc.do_create(req).await.expect("app");
    let grows = |r: &Rig| -> Vec<VmCall> {
        r.hv.calls()
            .into_iter()
            .filter(|c| matches!(c, VmCall::ResizeVcpus { .. } | VmCall::AddMemory { .. }))
            .collect()
    };
    let at_create = [VmCall::ResizeVcpus {
        id: "pod".into(),
        count: 2,
    }];
    assert_eq!(grows(&r), at_create, "grown at the app's Create");
    let update = api::UpdateTaskRequest {
        id: "pod".into(),
        resources: Some(Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
            value: br#"{"cpu":{"quota":100000,"period":100000}}"#.to_vec(),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    r.svc.do_update(update).await.expect("update");
    assert_eq!(grows(&r), at_create, "nothing more at the Update");
}
