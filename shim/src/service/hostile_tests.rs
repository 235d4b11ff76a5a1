//! The Task service against a hostile or frozen guest (the fake agent told
//! to lie, flood or never answer): containerd's calls still end, nothing
//! grows without bound, and the VM can always be torn down from the host.

use std::time::{Duration, Instant};

use agent_client::fake::Call as AgentCall;
use hypervisor::fake::Call as VmCall;
use protocols::containerd::api;

use super::tests::{rig, Rig};
use super::KillTimeouts;

/// A rig whose Kill gives the guest little time (the defaults are seconds).
fn impatient_rig() -> Rig {
    rig().map_svc(|s| {
        s.with_kill_timeouts(KillTimeouts {
            signal: Duration::from_millis(200),
            pod_exit: Duration::from_millis(300),
        })
    })
}

async fn kill(r: &Rig, id: &str, signal: u32) -> crate::error::Result<api::Empty> {
    r.svc
        .do_kill(api::KillRequest {
            id: id.into(),
            signal,
            ..Default::default()
        })
        .await
}

fn vm_stopped(r: &Rig) -> bool {
    r.hv.calls()
        .iter()
        .any(|c| matches!(c, VmCall::Stop { .. }))
}

#[tokio::test]
async fn the_pods_sigkill_ends_it_when_the_guest_never_answers() {
    let r = impatient_rig();
    r.create("pod", serde_json::json!({}))
        .await
        .expect("create");
    r.start("pod", "").await.expect("start");
    r.agent.hang("SignalProcess");
    r.agent.hang("WaitProcess");
    let t = Instant::now();
    kill(&r, "pod", 9).await.expect("kill answers");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(vm_stopped(&r), "the VM is stopped from the host");
    assert_eq!(r.wait("pod", "").await, 137);
    r.delete("pod", "").await.expect("delete");
    assert!(r.run_dir_empty(), "nothing left");
}

#[tokio::test]
async fn the_pods_sigkill_ends_it_when_the_guest_never_reports_the_exit() {
    let r = impatient_rig();
    r.create("pod", serde_json::json!({}))
        .await
        .expect("create");
    r.start("pod", "").await.expect("start");
    r.agent.hang("WaitProcess");
    kill(&r, "pod", 9).await.expect("the guest says yes");
    assert_eq!(
        r.wait("pod", "").await,
        137,
        "exit reported after the VM stopped"
    );
    assert!(vm_stopped(&r));
    r.delete("pod", "").await.expect("delete");
    assert!(r.run_dir_empty());
}

#[tokio::test]
async fn an_unanswered_signal_to_an_app_container_is_a_deadline_not_a_hang() {
    let r = impatient_rig();
    r.create("pod", serde_json::json!({}))
        .await
        .expect("create");
    r.start("pod", "").await.expect("start");
    let app = serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": "pod",
    });
    r.create("app", app).await.expect("create app");
    r.start("app", "").await.expect("start app");
    r.agent.hang("SignalProcess");
    let e = kill(&r, "app", 15).await.expect_err("no answer");
    assert!(
        matches!(e, crate::error::Error::DeadlineExceeded(ref m) if m.contains("app")),
        "{e:?}"
    );
    assert!(
        !vm_stopped(&r),
        "one container's signal does not end the pod"
    );
    // SIGTERM to the pod itself is not a teardown either.
    let e = kill(&r, "pod", 15).await.expect_err("no answer");
    assert!(
        matches!(e, crate::error::Error::DeadlineExceeded(_)),
        "{e:?}"
    );
    assert!(!vm_stopped(&r));
}

#[tokio::test]
async fn oom_floods_with_foreign_ids_publish_nothing_and_stay_bounded() {
    let r = rig();
    r.create("pod", serde_json::json!({}))
        .await
        .expect("create");
    r.start("pod", "").await.expect("start");
    for i in 0..150 {
        r.agent.push_oom(&format!("not-ours-{i}"));
    }
    for _ in 0..20 {
        r.agent.push_oom("pod");
    }
    r.agent.push_oom("../../etc");
    // Wait until the shim has taken every report (a GetOOMEvent for each).
    let deadline = Instant::now() + Duration::from_secs(10);
    while r
        .agent
        .calls()
        .iter()
        .filter(|c| matches!(c, AgentCall::GetOomEvent))
        .count()
        < 172
    {
        assert!(Instant::now() < deadline, "reports not taken");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ooms: Vec<String> = r
        .events
        .topics()
        .into_iter()
        .filter(|t| t == "/tasks/oom")
        .collect();
    assert_eq!(ooms.len(), 1, "one event for the pod's 20 quick reports");
    let ev = r.events.last("/tasks/oom").expect("oom");
    assert!(ev.contains("container_id: \"pod\""), "{ev}");
    assert!(
        r.svc.ooms.len() <= 1,
        "only this sandbox's containers are recorded"
    );
}

#[tokio::test]
async fn empty_reads_do_not_spin_the_shim() {
    let r = rig();
    r.create("pod", serde_json::json!({}))
        .await
        .expect("create");
    r.agent.answer_reads_empty();
    r.start("pod", "").await.expect("start");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let reads = r
        .agent
        .calls()
        .iter()
        .filter(|c| {
            matches!(
                c,
                AgentCall::ReadStdout { .. } | AgentCall::ReadStderr { .. }
            )
        })
        .count();
    // Backing off to 100 ms: about a dozen per stream, not thousands.
    assert!((2..=40).contains(&reads), "{reads} reads in 600 ms");
}

#[tokio::test]
async fn maximal_reads_arrive_whole() {
    let r = rig();
    let out = r.dir.path().join("stdout.log");
    let req = api::CreateTaskRequest {
        id: "pod".into(),
        bundle: r.bundle("pod", serde_json::json!({})),
        stdout: format!("file://{}", out.display()),
        options: Some(r.options()).into(),
        ..Default::default()
    };
    r.svc.do_create(req).await.expect("create");
    r.start("pod", "").await.expect("start");
    let big = vec![b'x'; 4 * 1024 * 1024];
    for _ in 0..3 {
        r.agent.push_stdout("pod", "", &big);
    }
    r.agent.exit_process("pod", "", 0);
    assert_eq!(r.wait("pod", "").await, 0);
    let len = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    assert_eq!(len, 3 * 4 * 1024 * 1024);
}

/// QEMU or a helper dies while pod start waits on the guest (CreateSandbox
/// or CreateContainer never answers): the create fails at once, naming why,
/// instead of at the agent's timeout, and nothing of the pod is left.
#[tokio::test]
async fn a_vm_dying_during_pod_start_fails_the_create_at_once() {
    for method in ["CreateSandbox", "CreateContainer"] {
        let r = rig();
        r.agent.hang(method);
        let kill_vm = async {
            while r.hv.vms().is_empty() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            r.hv.vms()[0].exit("virtiofsd exited: killed by signal 9");
        };
        let t = Instant::now();
        let both = async { tokio::join!(r.create("pod", serde_json::json!({})), kill_vm) };
        let (created, ()) = tokio::time::timeout(Duration::from_secs(5), both)
            .await
            .unwrap_or_else(|_| panic!("{method}: the create waited for the dead VM"));
        let e = created.expect_err(method);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "{method}: {:?}",
            t.elapsed()
        );
        assert!(e.to_string().contains("virtiofsd exited"), "{method}: {e}");
        assert!(vm_stopped(&r), "{method}: the VM's leftovers are stopped");
        assert!(r.run_dir_empty(), "{method}: nothing left");
    }
}
