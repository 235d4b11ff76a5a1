//! Load on the Task service (fakes below it, real concurrency above):
//! many containers and execs at once lose no exit code and leak no
//! descriptor.

use std::sync::Arc;
use std::time::Duration;

use protocols::containerd::api;
use tokio::task::JoinSet;

use super::tests::{exec_req, rig, Rig};

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

fn app(pod: &str) -> serde_json::Value {
    serde_json::json!({
        "io.kubernetes.cri.container-type": "container",
        "io.kubernetes.cri.sandbox-id": pod,
    })
}

/// Runs `f` for each of `items` concurrently and fails on the first error.
async fn all<T: Send + 'static>(
    r: &Arc<Rig>,
    items: Vec<T>,
    f: impl Fn(Arc<Rig>, T) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
) {
    let mut set = JoinSet::new();
    for item in items {
        set.spawn(f(r.clone(), item));
    }
    while let Some(done) = set.join_next().await {
        done.expect("task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_containers_and_five_hundred_execs_with_stdin_lose_nothing() {
    let before = open_fds();
    let r = Arc::new(rig());
    r.create("pod", serde_json::json!({})).await.expect("pod");
    r.start("pod", "").await.expect("start pod");
    let cids: Vec<String> = (0..50).map(|i| format!("app-{i}")).collect();
    all(&r, cids.clone(), |r, cid| {
        Box::pin(async move {
            r.create(&cid, app("pod")).await.expect("create");
            r.start(&cid, "").await.expect("start");
        })
    })
    .await;

    // 500 execs (10 per container), each with a stdin fifo.
    let execs: Vec<(String, String, std::path::PathBuf)> = (0..500)
        .map(|i| {
            let fifo = r.dir.path().join(format!("stdin-{i}"));
            nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .expect("mkfifo");
            (cids[i % 50].clone(), format!("e{i}"), fifo)
        })
        .collect();
    all(&r, execs.clone(), |r, (cid, exec, fifo)| {
        Box::pin(async move {
            let mut req = exec_req(&cid, &exec);
            req.stdin = fifo.to_string_lossy().into_owned();
            r.svc.do_exec(req).await.expect("exec");
            r.start(&cid, &exec).await.expect("start exec");
        })
    })
    .await;
    for (i, (cid, exec, _)) in execs.iter().enumerate() {
        r.agent.exit_process(cid, exec, (i % 200) as i32);
    }
    all(
        &r,
        execs.into_iter().enumerate().collect(),
        |r, (i, (cid, exec, _))| {
            Box::pin(async move {
                assert_eq!(r.wait(&cid, &exec).await, (i % 200) as u32, "{cid}/{exec}");
                r.delete(&cid, &exec).await.expect("delete exec");
            })
        },
    )
    .await;

    // Kill and delete every app container at once.
    all(&r, cids.clone(), |r, cid| {
        Box::pin(async move {
            r.svc
                .do_kill(api::KillRequest {
                    id: cid.clone(),
                    signal: 9,
                    ..Default::default()
                })
                .await
                .expect("kill");
            r.agent.exit_process(&cid, "", 137);
            assert_eq!(r.wait(&cid, "").await, 137);
            r.delete(&cid, "").await.expect("delete");
        })
    })
    .await;
    let exits = r
        .events
        .topics()
        .iter()
        .filter(|t| *t == "/tasks/exit")
        .count();
    assert_eq!(exits, 550, "one exit event per process");
    r.agent.exit_process("pod", "", 0);
    assert_eq!(r.wait("pod", "").await, 0);
    r.delete("pod", "").await.expect("delete pod");
    assert!(r.run_dir_empty());
    drop(r);
    // Stdio copies of exited processes wind down in the background.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while open_fds() > before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        open_fds() <= before,
        "{} fds open, {before} before",
        open_fds()
    );
}

/// A Create stuck in the guest (a slow image, a hung agent call) holds up
/// no other container: State, Kill, Pids and Stats of a running container
/// answer meanwhile, and the stuck one is not half-visible.
#[tokio::test]
async fn other_containers_answer_while_a_create_is_blocked_in_the_guest() {
    let r = Arc::new(rig());
    r.create("pod", serde_json::json!({})).await.expect("pod");
    r.start("pod", "").await.expect("start pod");
    r.agent.hang("CreateContainer");
    let stuck = tokio::spawn({
        let r = r.clone();
        async move { r.create("app", app("pod")).await }
    });
    // Until the guest has the request, nothing is blocked yet.
    let reached = tokio::time::timeout(Duration::from_secs(5), async {
        while !r.agent.calls().iter().any(|c| {
            matches!(c, agent_client::fake::Call::CreateContainer(req) if req.container_id == "app")
        }) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "app's CreateContainer never reached the agent"
    );

    let answers = tokio::time::timeout(Duration::from_secs(2), async {
        let state = r.status("pod", "").await;
        let pids = r
            .svc
            .do_pids(api::PidsRequest {
                id: "pod".into(),
                ..Default::default()
            })
            .await
            .expect("pids");
        r.svc
            .do_stats(api::StatsRequest {
                id: "pod".into(),
                ..Default::default()
            })
            .await
            .expect("stats");
        r.svc
            .do_kill(api::KillRequest {
                id: "pod".into(),
                signal: 15,
                ..Default::default()
            })
            .await
            .expect("kill");
        (state, pids.processes.len())
    })
    .await
    .expect("State/Pids/Stats/Kill of pod waited behind app's Create");
    assert_eq!(answers, (api::Status::RUNNING, 1));
    // The stuck container is not listed before its Create answered.
    assert!(r.svc.container("app").is_err());
    assert!(!stuck.is_finished());
    stuck.abort();
}
