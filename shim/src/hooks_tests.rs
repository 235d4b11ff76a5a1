//! Hooks run for real (sh scripts) on the host, no VM.
use super::*;

fn spec(hooks: serde_json::Value, netns: Option<&str>) -> oci::Spec {
    let mut ns = vec![serde_json::json!({"type": "mount"})];
    if let Some(p) = netns {
        ns.push(serde_json::json!({"type": "network", "path": p}));
    }
    serde_json::from_value(serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "annotations": {"a": "b"},
        "hooks": hooks,
        "linux": {"namespaces": ns}
    }))
    .expect("valid spec")
}

fn sh(script: &str) -> serde_json::Value {
    serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script], "env": ["X=1"]})
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("hooks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

fn ctx<'a>(spec: &'a oci::Spec) -> Context<'a> {
    Context {
        spec,
        id: "c1",
        bundle: "/run/bundle/c1",
        pid: 4242,
    }
}

#[tokio::test]
async fn create_hooks_run_in_order_with_the_state_on_stdin() {
    let d = tmp("order");
    let rec = |n: &str| {
        sh(&format!(
            "cat > {}/{n}.json; echo $X >> {}/order; echo {n} >> {}/order",
            d.display(),
            d.display(),
            d.display()
        ))
    };
    let s = spec(
        serde_json::json!({
            "prestart": [rec("prestart")],
            "createRuntime": [rec("createRuntime")],
            "createContainer": [rec("createContainer")],
            "poststart": [rec("poststart")]
        }),
        None,
    );
    assert!(any(&s, &Phase::CREATE));
    run(&ctx(&s), &Phase::CREATE).await.expect("hooks ran");
    let order = std::fs::read_to_string(d.join("order")).expect("order");
    assert_eq!(order, "1\nprestart\n1\ncreateRuntime\n1\ncreateContainer\n");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("createRuntime.json")).expect("state"))
            .expect("json");
    assert_eq!(state["ociVersion"], "1.0.2");
    assert_eq!(state["id"], "c1");
    assert_eq!(state["status"], "creating");
    assert_eq!(state["pid"], 4242, "no netns: the task's pid");
    assert_eq!(state["bundle"], "/run/bundle/c1");
    assert_eq!(state["annotations"]["a"], "b");
    run(&ctx(&s), &[Phase::Poststart]).await.expect("poststart");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("poststart.json")).expect("state"))
            .expect("json");
    assert_eq!(state["status"], "running");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_failing_create_hook_fails_with_its_output_and_stops_the_rest() {
    let d = tmp("fail");
    let s = spec(
        serde_json::json!({
            "createRuntime": [sh("echo no network for you >&2; exit 3")],
            "createContainer": [sh(&format!("touch {}/ran", d.display()))]
        }),
        None,
    );
    let e = run(&ctx(&s), &Phase::CREATE).await.expect_err("fails");
    let msg = e.to_string();
    assert!(matches!(e, Error::Hook(_)), "{e:?}");
    assert!(msg.contains("createRuntime hook /bin/sh failed"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
    assert!(msg.contains("no network for you"), "{msg}");
    assert!(!d.join("ran").exists(), "later hooks do not run");
    let _ = std::fs::remove_dir_all(&d);
}

#[tokio::test]
async fn a_hook_is_killed_at_its_timeout() {
    let mut slow = sh("sleep 30");
    slow["timeout"] = serde_json::json!(1);
    let s = spec(serde_json::json!({"prestart": [slow]}), None);
    let t0 = Instant::now();
    let e = run(&ctx(&s), &Phase::CREATE).await.expect_err("times out");
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("within its timeout of 1 s"), "{e}");
    let mut zero = sh("true");
    zero["timeout"] = serde_json::json!(0);
    let s = spec(serde_json::json!({"prestart": [zero]}), None);
    let e = run(&ctx(&s), &Phase::CREATE).await.expect_err("refused");
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

#[tokio::test]
async fn poststop_failures_are_logged_and_the_rest_still_run() {
    let d = tmp("poststop");
    let s = spec(
        serde_json::json!({"poststop": [sh("exit 1"), sh(&format!("cat > {}/state", d.display()))]}),
        None,
    );
    run(&ctx(&s), &[Phase::Poststop]).await.expect("not fatal");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("state")).expect("second hook ran"))
            .expect("json");
    assert_eq!(state["status"], "stopped");
    let _ = std::fs::remove_dir_all(&d);
}

/// With a network namespace in the spec, create-time hooks run in it and
/// the state's pid names a task in it; poststart runs in the host's.
#[tokio::test]
async fn create_hooks_run_in_the_pods_network_namespace() {
    let name = format!("kata-hooks-{}", std::process::id());
    let added = Command::new("ip").args(["netns", "add", &name]).status();
    if !added.is_ok_and(|s| s.success()) {
        agent_client::testing::skip_unless_required("cannot create a network namespace here");
        return;
    }
    let path = format!("/run/netns/{name}");
    let d = tmp("netns");
    let show = |n: &str| {
        sh(&format!(
            "readlink /proc/self/ns/net > {dir}/{n}; cat > {dir}/{n}.json",
            dir = d.display()
        ))
    };
    let s = spec(
        serde_json::json!({"createRuntime": [show("create")], "poststart": [show("post")]}),
        Some(&path),
    );
    let r = run(&ctx(&s), &Phase::CREATE).await;
    let r2 = run(&ctx(&s), &[Phase::Poststart]).await;
    let pod_ns = std::fs::metadata(&path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let _ = Command::new("ip").args(["netns", "delete", &name]).status();
    r.expect("create hooks");
    r2.expect("poststart");
    let pod_ns = format!("net:[{}]", pod_ns.expect("netns inode"));
    let read = |n: &str| std::fs::read_to_string(d.join(n)).expect("hook output");
    assert_eq!(read("create").trim(), pod_ns);
    let host = std::fs::read_link("/proc/self/ns/net").expect("own netns");
    assert_eq!(read("post").trim(), host.to_string_lossy());
    let state: serde_json::Value = serde_json::from_str(&read("create.json")).expect("json");
    assert_ne!(
        state["pid"], 4242,
        "the pid of the thread in the pod's namespace"
    );
    let _ = std::fs::remove_dir_all(&d);
}
