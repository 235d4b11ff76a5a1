//! `connect` end to end: a tiny ttrpc agent (Health + part of AgentService from
//! `protocols`) behind a fake hybrid-vsock backend, like vhost-device-vsock's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_client::{connect, Address, DialError, Error, LastAttempt};
use async_trait::async_trait;
use protocols::ttrpc::r#async::{Server, TtrpcContext};
use protocols::ttrpc::{self, Code};
use protocols::{agent, agent_ttrpc, health, health_ttrpc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

struct TestAgent {
    checks: AtomicU32,
}

#[async_trait]
impl health_ttrpc::Health for TestAgent {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        self.checks.fetch_add(1, Ordering::SeqCst);
        Ok(health::HealthCheckResponse {
            status: health::health_check_response::ServingStatus::SERVING.into(),
            ..Default::default()
        })
    }
}

#[async_trait]
impl agent_ttrpc::AgentService for TestAgent {
    async fn start_container(
        &self,
        _: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> ttrpc::Result<protocols::protobuf::well_known_types::empty::Empty> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            Code::NOT_FOUND,
            format!("container {} not found", req.container_id),
        )))
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        _: agent::WaitProcessRequest,
    ) -> ttrpc::Result<agent::WaitProcessResponse> {
        // Longer than any ordinary deadline would matter here, but short for the test.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(agent::WaitProcessResponse {
            status: 42,
            ..Default::default()
        })
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> ttrpc::Result<agent::ReadStreamResponse> {
        if req.exec_id == "done" {
            return Err(ttrpc::Error::Eof);
        }
        Ok(agent::ReadStreamResponse {
            data: b"hi".to_vec(),
            ..Default::default()
        })
    }
}

/// Starts the ttrpc agent on `<dir>/agent.sock`.
async fn start_agent(dir: &Path) -> (Server, Arc<TestAgent>) {
    let sock = dir.join("agent.sock");
    let svc = Arc::new(TestAgent {
        checks: AtomicU32::new(0),
    });
    let mut services: HashMap<String, ttrpc::r#async::Service> = HashMap::new();
    services.extend(health_ttrpc::create_health(svc.clone()));
    services.extend(agent_ttrpc::create_agent_service(svc.clone()));
    let mut server = Server::new()
        .bind(&format!("unix://{}", sock.display()))
        .expect("bind agent")
        .register_service(services);
    server.start().await.expect("start agent");
    (server, svc)
}

/// A fake vsock backend on `uds`: `CONNECT <port>` → `OK`, then splices to the agent.
/// It starts answering only after `ready_after` (the guest is still booting before).
fn start_backend(uds: PathBuf, agent_sock: PathBuf, ready_after: Duration) {
    let listener = UnixListener::bind(&uds).expect("bind backend");
    let ready_at = Instant::now() + ready_after;
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let agent_sock = agent_sock.clone();
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while conn.read(&mut b).await.unwrap_or(0) == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                if line != b"CONNECT 1024" || Instant::now() < ready_at {
                    // Like a guest nobody listens in yet: connection closed.
                    return;
                }
                let Ok(mut upstream) = UnixStream::connect(&agent_sock).await else {
                    return;
                };
                conn.write_all(b"OK 1073741824\n").await.expect("ok line");
                let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_hybrid_vsock_and_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, svc) = start_agent(dir.path()).await;
    let uds = dir.path().join("vsock.sock");
    start_backend(
        uds.clone(),
        dir.path().join("agent.sock"),
        Duration::from_millis(300),
    );

    let addr = Address::Hybrid {
        uds_path: uds,
        port: 1024,
    };
    let t0 = Instant::now();
    let agent = connect(&addr, Duration::from_secs(5), &|| "console".into())
        .await
        .expect("connect");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "answered before the backend was ready: {took:?}"
    );
    assert!(took < Duration::from_secs(2), "backoff too slow: {took:?}");
    assert_eq!(svc.checks.load(Ordering::SeqCst), 1);

    agent.check().await.expect("check");
    let e = agent.start_container("c1").await.expect_err("not found");
    assert_eq!(e.code(), Some(Code::NOT_FOUND), "{e}");
    assert_eq!(agent.wait_process("c1", "").await.expect("wait"), 42);
    assert_eq!(
        agent.read_stdout("c1", "", 10).await.expect("read"),
        Some(b"hi".to_vec())
    );
    assert_eq!(
        agent.read_stdout("c1", "done", 10).await.expect("eof"),
        None
    );
    // Not served by the test agent: the generated default answers NOT_FOUND.
    let e = agent
        .destroy_sandbox()
        .await
        .expect_err("unimplemented here");
    assert!(e.code().is_some(), "{e}");
}

#[tokio::test]
async fn connect_gives_up_with_console_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let uds = dir.path().join("vsock.sock");
    // A backend that never lets the handshake through.
    start_backend(
        uds.clone(),
        dir.path().join("absent.sock"),
        Duration::from_secs(3600),
    );
    let addr = Address::Hybrid {
        uds_path: uds,
        port: 1024,
    };
    let t0 = Instant::now();
    let e = connect(&addr, Duration::from_millis(400), &|| {
        "guest said: panic".into()
    })
    .await
    .map(|_| ())
    .expect_err("no agent");
    assert!(t0.elapsed() < Duration::from_secs(2));
    match e {
        Error::ConnectTimeout {
            last_error,
            console,
            addr,
            ..
        } => {
            assert!(console.contains("guest said: panic"));
            assert!(addr.contains("vsock.sock"), "{addr}");
            // The backend closes every CONNECT (or the deadline cuts one).
            match &*last_error {
                LastAttempt::Dial(DialError::Hybrid(io)) => assert!(
                    matches!(
                        io.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::TimedOut
                    ),
                    "{io}"
                ),
                other => panic!("expected a hybrid dial error, got {other:?}"),
            }
        }
        other => panic!("expected ConnectTimeout, got {other}"),
    }
}

/// The kernel vsock path cannot reach a guest here (no vhost-vsock, no
/// loopback transport): it must still fail within the deadline, naming the address.
#[tokio::test]
async fn kernel_vsock_without_guest_times_out() {
    let addr = Address::Vsock {
        cid: 4_000_000,
        port: 1024,
    };
    let t0 = Instant::now();
    let e = connect(&addr, Duration::from_millis(300), &|| String::new())
        .await
        .map(|_| ())
        .expect_err("nobody there");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    match e {
        Error::ConnectTimeout {
            addr, last_error, ..
        } => {
            assert_eq!(addr, "vsock://4000000:1024");
            assert!(
                matches!(&*last_error,
                    LastAttempt::Dial(DialError::Vsock { url, .. } | DialError::VsockTimeout { url, .. })
                        if url == "vsock://4000000:1024"),
                "{last_error:?}"
            );
            assert!(
                last_error.to_string().contains("vsock://4000000:1024"),
                "{last_error}"
            );
        }
        other => panic!("expected ConnectTimeout, got {other}"),
    }
}
