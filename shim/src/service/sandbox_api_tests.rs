//! The Sandbox API on the fake hypervisor and agent: every RPC, the pod's
//! VM outliving its containers, Wait returning when the VM dies, Shutdown
//! leaving nothing, and the idle exit.

use std::time::Duration;

use hypervisor::fake::Call as VmCall;
use protocols::containerd::api;
use protocols::containerd::sandbox_api as sapi;
use protocols::containerd::sandbox_async::Sandbox as SandboxApi;
use protocols::containerd::ttrpc::Code;
use protocols::protobuf::well_known_types::any::Any;

use super::sandbox_api::{STATE_NOTREADY, STATE_READY};
use super::tests::code;
use crate::testing::ttrpc_context;

/// The Task service rig of `tests.rs` in CRI's namespace, with the
/// Sandbox API's calls on top.
struct Rig(super::tests::Rig);

impl std::ops::Deref for Rig {
    type Target = super::tests::Rig;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

const POD: &str = "pod1";

fn rig() -> Rig {
    Rig(super::tests::rig_in("k8s.io"))
}

impl Rig {
    async fn create(&self) -> super::Result<sapi::CreateSandboxResponse> {
        self.svc
            .do_create_sandbox(sapi::CreateSandboxRequest {
                sandbox_id: POD.into(),
                options: Some(self.options()).into(),
                ..Default::default()
            })
            .await
    }

    async fn start(&self) -> super::Result<sapi::StartSandboxResponse> {
        self.svc
            .do_start_sandbox(sapi::StartSandboxRequest {
                sandbox_id: POD.into(),
                ..Default::default()
            })
            .await
    }

    async fn status(&self) -> sapi::SandboxStatusResponse {
        self.svc
            .do_sandbox_status(sapi::SandboxStatusRequest {
                sandbox_id: POD.into(),
                verbose: true,
                ..Default::default()
            })
            .await
            .expect("status")
    }

    fn wait(&self) -> tokio::task::JoinHandle<super::Result<sapi::WaitSandboxResponse>> {
        let svc = self.svc.clone();
        tokio::spawn(async move {
            svc.do_wait_sandbox(sapi::WaitSandboxRequest {
                sandbox_id: POD.into(),
                ..Default::default()
            })
            .await
        })
    }

    fn vm_stopped(&self) -> bool {
        self.hv
            .calls()
            .iter()
            .any(|c| matches!(c, VmCall::Stop { .. }))
    }

    /// An app container of the pod, as CRI sends it over the Task API.
    async fn create_app(&self, id: &str) -> super::Result<api::CreateTaskResponse> {
        let annotations = serde_json::json!({
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": POD,
        });
        self.svc
            .do_create(api::CreateTaskRequest {
                id: id.into(),
                bundle: self.bundle(id, annotations),
                ..Default::default()
            })
            .await
    }
}

#[tokio::test]
async fn every_rpc_through_a_pod_lifecycle() {
    let r = rig();
    let ctx = ttrpc_context();
    r.create().await.expect("create");
    assert_eq!(
        r.status().await.state,
        STATE_NOTREADY,
        "created, not started"
    );
    assert!(r.hv.calls().is_empty(), "CreateSandbox boots nothing");
    assert!(!r.svc.is_idle(), "a created pod keeps the daemon");

    let started = r.start().await.expect("start");
    assert!(started.created_at.is_some());
    assert_eq!(
        r.hv.calls()
            .iter()
            .filter(|c| matches!(c, VmCall::Launch { .. }))
            .count(),
        1
    );
    // No pause container will own the pod's PID namespace: the agent is
    // asked to hold one (else a CRI container sharing it cannot start).
    assert!(
        r.agent.calls().iter().any(|c| matches!(
            c,
            agent_client::fake::Call::CreateSandbox(req) if req.sandbox_pidns
        )),
        "CreateSandbox asks for a held pod pid namespace"
    );
    let again = r.start().await.expect("start is idempotent");
    assert_eq!(again.pid, started.pid);

    let st = r.status().await;
    assert_eq!(st.sandbox_id, POD);
    assert_eq!(st.state, STATE_READY);
    assert_eq!(st.info.get("vmm").map(String::as_str), Some("qemu"));
    assert!(st.extra.is_some(), "verbose carries extra");
    assert!(st.created_at.is_some() && st.exited_at.is_none());

    let p = SandboxApi::platform(
        r.svc.as_ref(),
        &ctx,
        sapi::PlatformRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        },
    )
    .await
    .expect("platform");
    assert_eq!(p.platform.os, "linux");
    assert!(!p.platform.architecture.is_empty());

    r.svc
        .do_ping_sandbox(sapi::PingRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await
        .expect("ping");
    let m = r
        .svc
        .do_sandbox_metrics(sapi::SandboxMetricsRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await
        .expect("metrics");
    assert_eq!(m.metrics.id, POD);
    assert!(m.metrics.data.type_url.contains("io.containerd.cgroups"));

    let waiter = r.wait();
    r.svc
        .do_stop_sandbox(sapi::StopSandboxRequest {
            sandbox_id: POD.into(),
            timeout_secs: 5,
            ..Default::default()
        })
        .await
        .expect("stop");
    let w = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait returns after stop")
        .expect("join")
        .expect("wait");
    assert_eq!(w.exit_status, 0);
    assert!(w.exited_at.is_some());
    assert!(r.vm_stopped());
    let st = r.status().await;
    assert_eq!(st.state, STATE_NOTREADY);
    assert!(st.exited_at.is_some());
    let e = r.start().await.expect_err("no restart of a stopped pod");
    assert_eq!(code(e), Code::FAILED_PRECONDITION);

    r.svc
        .do_shutdown_sandbox(sapi::ShutdownSandboxRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await
        .expect("shutdown");
    tokio::time::timeout(Duration::from_secs(2), r.svc.exit.notified())
        .await
        .expect("the daemon is told to exit");
    assert!(r.svc.is_idle(), "nothing left to serve");
    assert!(
        !r.dir.path().join("run").join(POD).exists(),
        "the sandbox directory is gone"
    );
    let e = r
        .svc
        .do_sandbox_status(sapi::SandboxStatusRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await
        .expect_err("gone after shutdown");
    assert_eq!(code(e), Code::NOT_FOUND);
}

#[tokio::test]
async fn wait_returns_when_the_vm_dies() {
    let r = rig();
    r.create().await.expect("create");
    r.start().await.expect("start");
    let waiter = r.wait();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiter.is_finished(), "Wait blocks while the VM runs");
    r.hv.vms()[0].exit("killed");
    let w = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("wait returns after the VM died")
        .expect("join")
        .expect("wait");
    assert_eq!(w.exit_status, 137);
    assert_eq!(r.status().await.state, STATE_NOTREADY);
    let e = r
        .svc
        .do_ping_sandbox(sapi::PingRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await;
    // The VM watcher clears the slot shortly after the exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let e2 = r
        .svc
        .do_ping_sandbox(sapi::PingRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await;
    assert!(e.is_err() || e2.is_err(), "ping fails once the VM is dead");
}

#[tokio::test]
async fn app_containers_join_the_pod_vm_which_outlives_them() {
    let r = rig();
    r.create().await.expect("create");
    r.start().await.expect("start");
    r.create_app("app1").await.expect("app container joins");
    let launches = |r: &Rig| {
        r.hv.calls()
            .iter()
            .filter(|c| matches!(c, VmCall::Launch { .. }))
            .count()
    };
    assert_eq!(launches(&r), 1, "no VM of its own");
    r.svc
        .do_delete(api::DeleteRequest {
            id: "app1".into(),
            ..Default::default()
        })
        .await
        .expect("delete");
    assert!(!r.vm_stopped(), "the pod's VM outlives its last container");
    r.svc
        .do_shutdown(api::ShutdownRequest::default())
        .await
        .expect("task shutdown");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), r.svc.exit.notified())
            .await
            .is_err(),
        "Task.Shutdown does not end a Sandbox API pod"
    );
    r.create_app("app2").await.expect("a new container follows");
    assert_eq!(launches(&r), 1);

    // Stop with a container still running: it is reported exited.
    r.svc
        .do_start(api::StartRequest {
            id: "app2".into(),
            ..Default::default()
        })
        .await
        .expect("start app2");
    r.svc
        .do_stop_sandbox(sapi::StopSandboxRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await
        .expect("stop");
    let exit = r
        .events
        .last(protocols::containerd::topics::TASK_EXIT_EVENT_TOPIC)
        .expect("TaskExit for the container left running");
    assert!(exit.contains("app2"), "{exit}");
}

#[tokio::test]
async fn bad_requests_get_clear_codes() {
    let r = rig();
    let e = r.start().await.expect_err("unknown pod");
    assert_eq!(code(e), Code::NOT_FOUND);
    let e = r
        .svc
        .do_create_sandbox(sapi::CreateSandboxRequest {
            sandbox_id: "../x".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad id");
    assert_eq!(code(e), Code::INVALID_ARGUMENT);
    r.create().await.expect("create");
    let e = r.create().await.expect_err("one pod per daemon");
    assert_eq!(code(e), Code::ALREADY_EXISTS);
    let e = r
        .svc
        .do_ping_sandbox(sapi::PingRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await
        .expect_err("not started");
    assert_eq!(code(e), Code::FAILED_PRECONDITION);
    r.hv.fail_next_launch(hypervisor::Error::InvalidConfig("kernel".into()));
    assert!(r.start().await.is_err(), "boot failure is reported");
    assert!(r.hv.vms().is_empty() || r.vm_stopped());
    // Stopping a pod that never started is fine, and Wait then returns.
    r.svc
        .do_stop_sandbox(sapi::StopSandboxRequest {
            sandbox_id: POD.into(),
            ..Default::default()
        })
        .await
        .expect("stop");
    let w = tokio::time::timeout(Duration::from_secs(2), r.wait())
        .await
        .expect("wait")
        .expect("join")
        .expect("wait ok");
    assert_eq!(w.exit_status, 0);
}

#[tokio::test]
async fn an_idle_daemon_exits() {
    let r = rig();
    assert!(r.svc.is_idle());
    super::idle::exit_when_idle(r.svc.clone(), Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(3), r.svc.exit.notified())
        .await
        .expect("an idle daemon is told to exit");

    // A daemon whose only create failed is idle again and exits too.
    let r = rig();
    r.hv.fail_next_launch(hypervisor::Error::InvalidConfig("kernel".into()));
    let b = r.dir.path().join("bundle-c1");
    std::fs::create_dir_all(b.join("rootfs")).expect("bundle");
    std::fs::write(
        b.join("config.json"),
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"},
        })
        .to_string(),
    )
    .expect("spec");
    let failed = r
        .svc
        .do_create(api::CreateTaskRequest {
            id: "c1".into(),
            bundle: b.to_string_lossy().into_owned(),
            options: Some(r.options()).into(),
            ..Default::default()
        })
        .await;
    assert!(failed.is_err());
    assert!(r.svc.is_idle());
    super::idle::exit_when_idle(r.svc.clone(), Duration::from_millis(100));
    tokio::time::timeout(Duration::from_secs(3), r.svc.exit.notified())
        .await
        .expect("a daemon whose create failed exits");

    // A pod keeps it.
    let r = rig();
    r.create().await.expect("create");
    super::idle::exit_when_idle(r.svc.clone(), Duration::from_millis(100));
    assert!(
        tokio::time::timeout(Duration::from_millis(600), r.svc.exit.notified())
            .await
            .is_err(),
        "a daemon with a pod stays"
    );
}

#[test]
fn pod_hostname_comes_from_cri_options() {
    // runtime.v1.PodSandboxConfig { metadata (1) = {...}, hostname (2) = "web-0" }
    let mut value = Vec::new();
    {
        let mut os = protocols::protobuf::CodedOutputStream::vec(&mut value);
        os.write_bytes(1, b"\x0a\x03web").expect("write");
        os.write_string(2, "web-0").expect("write");
        os.flush().expect("flush");
    }
    let any = Any {
        type_url: "type.googleapis.com/runtime.v1.PodSandboxConfig".into(),
        value,
        ..Default::default()
    };
    assert_eq!(
        super::sandbox_api::hostname_option(Some(&any)).as_deref(),
        Some("web-0")
    );
    let other = Any {
        type_url: "runtimeoptions.v1.Options".into(),
        ..Default::default()
    };
    assert_eq!(super::sandbox_api::hostname_option(Some(&other)), None);
    assert_eq!(super::sandbox_api::hostname_option(None), None);
}
