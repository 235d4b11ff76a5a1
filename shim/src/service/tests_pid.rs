//! PID namespaces on fakes: what the agent is told, runc's KillAll, and an
//! exit reported although its output is held open.
use super::*;

/// A bundle whose spec joins a PID namespace by path (CRI's app container
/// of a shareProcessNamespace pod), or owns one.
fn bundle_with_pid(r: &Rig, id: &str, shared: bool, annotations: serde_json::Value) -> String {
    let b = r.dir.path().join(format!("bundle-{id}"));
    std::fs::create_dir_all(b.join("rootfs")).expect("bundle");
    let pid = if shared {
        serde_json::json!({"type": "pid", "path": "/proc/4242/ns/pid"})
    } else {
        serde_json::json!({"type": "pid"})
    };
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["sleep", "1"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "annotations": annotations,
        "linux": {"namespaces": [pid, {"type": "mount"}]}
    });
    std::fs::write(b.join("config.json"), spec.to_string()).expect("spec");
    b.to_string_lossy().into_owned()
}

async fn create_with_pid(r: &Rig, id: &str, shared: bool, annotations: serde_json::Value) {
    let req = api::CreateTaskRequest {
        id: id.into(),
        bundle: bundle_with_pid(r, id, shared, annotations),
        options: Some(r.options()).into(),
        ..Default::default()
    };
    r.svc.do_create(req).await.expect("create");
}

fn create_call(r: &Rig, id: &str) -> agent_client::fake::Call {
    r.agent
        .calls()
        .into_iter()
        .find(|c| matches!(c, AgentCall::CreateContainer(q) if q.container_id == id))
        .expect("CreateContainer")
}

fn kill_alls(r: &Rig, id: &str) -> usize {
    r.agent
        .calls()
        .iter()
        .filter(|c| {
            matches!(c, AgentCall::SignalProcess { container_id, exec_id, signal: 9 }
                if container_id == id && exec_id.is_empty())
        })
        .count()
}

#[tokio::test]
async fn a_container_sharing_the_pods_pid_namespace_is_killed_whole_when_its_init_exits() {
    let r = rig();
    let sandbox = serde_json::json!({"io.kubernetes.cri.container-type": "sandbox"});
    create_with_pid(&r, "pod", false, sandbox).await;
    let app = serde_json::json!({"io.kubernetes.cri.container-type": "container",
                                 "io.kubernetes.cri.sandbox-id": "pod"});
    create_with_pid(&r, "app", true, app).await;
    // The agent decides the namespace: no pid entry, the flag instead.
    for (id, shared) in [("pod", false), ("app", true)] {
        let AgentCall::CreateContainer(req) = create_call(&r, id) else {
            unreachable!()
        };
        assert_eq!(req.sandbox_pidns, shared, "{id}");
        assert!(
            !req.OCI.Linux.Namespaces.iter().any(|n| n.Type == "pid"),
            "{id}: {:?}",
            req.OCI.Linux.Namespaces
        );
    }
    r.start("pod", "").await.expect("start pod");
    r.start("app", "").await.expect("start app");
    // The init dies; a worker it left still holds stdout.
    r.agent.exit_process_output_held("app", "", 137);
    let t0 = std::time::Instant::now();
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(20), r.wait("app", ""))
            .await
            .expect("the exit is reported although stdout stays open"),
        137
    );
    assert!(t0.elapsed() < crate::drain::QUIET * 2, "{:?}", t0.elapsed());
    assert!(r
        .events
        .last("/tasks/exit")
        .is_some_and(|e| e.contains("id: \"app\"")));
    assert_eq!(kill_alls(&r, "app"), 1, "KillAll once the init exited");
    // The pod's owner of the namespace: the kernel ends the rest, no KillAll.
    r.agent.exit_process("pod", "", 0);
    assert_eq!(r.wait("pod", "").await, 0);
    assert_eq!(kill_alls(&r, "pod"), 0);
}
