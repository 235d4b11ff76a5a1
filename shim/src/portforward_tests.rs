use std::io::{Read, Write};
use std::process::Command;

use tokio::net::{UnixListener, UnixStream};

use super::*;

#[test]
fn request_line() {
    assert_eq!(request(8080), "TCP 8080\n");
    assert_eq!(request(1), "TCP 1\n");
    assert!(request(u16::MAX).len() <= protocols::port_forward::MAX_REQUEST);
}

#[test]
fn answers_parse() {
    assert_eq!(parse_answer(b"OK"), Ok(()));
    assert_eq!(
        parse_answer(b"ERR connect to port 9: refused"),
        Err(AnswerError::Refused("connect to port 9: refused".into()))
    );
    // Control characters from the guest never reach the log as such.
    assert_eq!(
        parse_answer(b"ERR a\x1b[2Jb"),
        Err(AnswerError::Refused("a?[2Jb".into()))
    );
    for bad in [&b""[..], b"OK ", b"ok", b"OKAY", b"ERR", b"\xff\xfe"] {
        assert!(
            matches!(parse_answer(bad), Err(AnswerError::Malformed(_))),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn answer_reading_is_bounded_and_exact() {
    let mut r: &[u8] = b"OK\npayload";
    assert_eq!(read_answer(&mut r).await, Ok(()));
    assert_eq!(r, b"payload", "relayed bytes stay in the stream");
    let flood = vec![b'A'; 10_000];
    let mut r: &[u8] = &flood;
    assert_eq!(read_answer(&mut r).await, Err(AnswerError::TooLong));
    assert!(r.len() >= flood.len() - MAX_ANSWER, "stopped at the bound");
    let mut r: &[u8] = b"OK";
    assert_eq!(read_answer(&mut r).await, Err(AnswerError::Truncated));
}

#[tokio::test]
async fn a_silent_guest_times_out() {
    let (mut host, _guest) = UnixStream::pair().expect("pair");
    let e = handshake_within(&mut host, 80, Duration::from_millis(100))
        .await
        .expect_err("timeout");
    assert!(matches!(e, PortForwardError::AnswerTimeout), "{e}");
}

#[test]
fn nat_rules() {
    assert_eq!(
        nat_rule(false, 40000).join(" "),
        "-o lo -p tcp -d 127.0.0.0/8 ! --dport 40000 -j REDIRECT --to-ports 40000"
    );
    assert!(nat_rule(true, 1).join(" ").contains("-d ::1/128"));
}

/// A fake agent behind a fake hybrid-vsock socket: `CONNECT 1027` then
/// `TCP <port>`; port 8080 echoes, anything else is refused.
fn fake_agent(path: &Path) -> tokio::task::JoinHandle<()> {
    let listener = UnixListener::bind(path).expect("bind");
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let connect = agent_client::dial::read_line_bytewise(&mut s)
                    .await
                    .expect("connect line");
                assert_eq!(
                    connect,
                    format!("CONNECT {}", protocols::PORT_FORWARD_VSOCK_PORT)
                );
                s.write_all(b"OK 1027\n").await.expect("ok");
                let req = agent_client::dial::read_line_bytewise(&mut s)
                    .await
                    .expect("request");
                if req == "TCP 8080" {
                    s.write_all(b"OK\n").await.expect("ok");
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                } else {
                    let _ = s.write_all(b"ERR nothing listens\n").await;
                }
            });
        }
    })
}

/// Relay over loopback TCP and a unix socketpair: all bytes both ways,
/// half-close passed on.
#[tokio::test]
async fn relay_moves_everything_and_passes_half_close() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let client = tokio::spawn(async move {
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 256) as u8).collect();
        let (mut r, mut w) = c.split();
        let send = async {
            w.write_all(&data).await.expect("send");
            w.shutdown().await.expect("half-close");
        };
        let mut back = Vec::new();
        let recv = r.read_to_end(&mut back);
        let ((), got) = tokio::join!(send, recv);
        got.expect("recv");
        assert!(back == data, "{} bytes back", back.len());
    });
    let (mut accepted, _) = l.accept().await.expect("accept");
    let (mut host, mut guest) = UnixStream::pair().expect("pair");
    let echo = tokio::spawn(async move {
        let (mut r, mut w) = guest.split();
        tokio::io::copy(&mut r, &mut w).await.expect("echo");
        w.shutdown().await.expect("shutdown");
    });
    let (up, down) = relay(&mut accepted, &mut host, 80).await.expect("relay");
    assert_eq!((up, down), (1_000_000, 1_000_000));
    client.await.expect("client");
    echo.await.expect("echo");
}

/// Runs `f` on a thread inside `netns`.
fn in_netns<T: Send + 'static>(netns: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let netns = netns.to_path_buf();
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&netns).expect("netns");
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("netns thread")
}

/// End to end in a real network namespace (root and iptables needed; a
/// note and a pass otherwise): a dial of `localhost:8080` there reaches
/// the fake agent, over IPv4 and IPv6; a refused port is a reset; stop
/// removes the NAT rules and the listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_loopback_dials_in_the_pod_netns() {
    let name = format!("kata-pf-test-{}", std::process::id());
    if !Command::new("ip")
        .args(["netns", "add", &name])
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipping: cannot create a network namespace (not root?)");
        return;
    }
    let netns = PathBuf::from(format!("/run/netns/{name}"));
    let _ = Command::new("ip")
        .args(["-n", &name, "link", "set", "lo", "up"])
        .status();
    let d = tempfile::tempdir().expect("tempdir");
    let sock = d.path().join("hvsock");
    let _agent = fake_agent(&sock);
    let pf = match PortForward::start(
        "sb-test",
        &netns,
        VsockEndpoint::Hybrid {
            uds_path: sock.clone(),
        },
    )
    .await
    {
        Ok(pf) => pf,
        Err(e @ PortForwardError::Nat(crate::network::NetworkError::Spawn { .. })) => {
            eprintln!("skipping: {e}");
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            return;
        }
        Err(e) => panic!("start: {e}"),
    };
    let result = tokio::task::spawn_blocking({
        let netns = netns.clone();
        move || {
            in_netns(&netns, || {
                let mut out = Vec::new();
                for target in ["127.0.0.1:8080", "[::1]:8080"] {
                    let mut c = std::net::TcpStream::connect(target).expect("connect");
                    c.set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    c.write_all(b"ping").expect("write");
                    c.shutdown(std::net::Shutdown::Write).expect("half-close");
                    let mut got = String::new();
                    c.read_to_string(&mut got).expect("read");
                    out.push(got);
                }
                // Refused in the guest: the connect succeeds (our
                // listener), then the connection is reset.
                let mut c = std::net::TcpStream::connect("127.0.0.1:9").expect("connect");
                c.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut buf = [0u8; 8];
                let refused = c.read(&mut buf);
                (out, refused.map_err(|e| e.kind()))
            })
        }
    })
    .await
    .expect("join");
    let rules = Command::new("ip")
        .args([
            "netns", "exec", &name, "iptables", "-t", "nat", "-S", "OUTPUT",
        ])
        .output()
        .expect("iptables -S");
    pf.stop().await;
    let after = Command::new("ip")
        .args([
            "netns", "exec", &name, "iptables", "-t", "nat", "-S", "OUTPUT",
        ])
        .output()
        .expect("iptables -S");
    let _ = Command::new("ip").args(["netns", "del", &name]).status();

    let (echoed, refused) = result;
    assert_eq!(echoed, vec!["ping".to_owned(), "ping".to_owned()]);
    assert_eq!(refused, Err(std::io::ErrorKind::ConnectionReset));
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(
        rules.contains(&format!("--to-ports {}", pf.port())),
        "{rules}"
    );
    let after = String::from_utf8_lossy(&after.stdout);
    assert!(!after.contains("REDIRECT"), "rule left after stop: {after}");
}

/// A slot whose start fails (no such netns) or is stopped while starting
/// leaves nothing and never panics.
#[tokio::test]
async fn slot_stops_in_any_state() {
    let slot = Slot::start(
        "sb-none",
        Path::new("/nonexistent/netns"),
        VsockEndpoint::Hybrid {
            uds_path: "/nonexistent/sock".into(),
        },
    );
    slot.stop().await;
    slot.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(slot.state.lock().await.running.is_none());
}
