use std::sync::Mutex;

use agent_client::fake::{Call as AgentCall, FakeAgent};
use async_trait::async_trait;
use hypervisor::fake::Call as VmCall;
use hypervisor::{FakeHypervisor, Hypervisor, MachineType};

use super::*;
use crate::network::scan::{parse_addresses, parse_neighbours, parse_routes};

/// Records tap calls; fails `attach` of the taps named in `fail`.
#[derive(Debug, Default)]
struct FakeTaps {
    calls: Mutex<Vec<String>>,
    fail: Vec<String>,
}

#[async_trait]
impl tap::TapOps for FakeTaps {
    async fn attach(&self, _: &Path, tap: &str, iface: &str, mtu: u32) -> super::super::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("attach {tap} {iface} {mtu}"));
        if self.fail.iter().any(|f| f == tap) {
            return Err(super::super::NetworkError::Failed {
                cmd: "tc".into(),
                stderr: "scripted".into(),
            });
        }
        Ok(())
    }

    async fn detach(&self, _: &Path, tap: &str, iface: &str) -> super::super::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(format!("detach {tap} {iface}"));
        Ok(())
    }
}

impl FakeTaps {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

const ETH0: &str = r#"{"ifname":"eth0","mtu":1500,"link_type":"ether","address":"ca:fe:00:00:00:01",
    "addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16,"scope":"global"}]}"#;
const ETH0_V6: &str = r#"{"ifname":"eth0","mtu":1500,"link_type":"ether","address":"ca:fe:00:00:00:01",
    "addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16,"scope":"global"},
                 {"family":"inet6","local":"fd00:9::5","prefixlen":64,"scope":"global"}]}"#;
const NET1: &str = r#"{"ifname":"net1","mtu":1400,"link_type":"ether","address":"ca:fe:00:00:00:02",
    "addr_info":[{"family":"inet","local":"192.168.77.2","prefixlen":24,"scope":"global"}]}"#;

fn network(ifaces: &[&str], v6_route: bool) -> PodNetwork {
    let mut routes = parse_routes(
        r#"[{"dst":"default","gateway":"10.88.0.1","dev":"eth0"},
            {"dst":"192.168.77.0/24","dev":"net1","scope":"link"}]"#,
        4,
    )
    .expect("v4 routes");
    if v6_route {
        routes.extend(
            parse_routes(
                r#"[{"dst":"fd00:8::/64","gateway":"fd00:9::1","dev":"eth0"}]"#,
                6,
            )
            .expect("v6 routes"),
        );
    }
    PodNetwork {
        interfaces: parse_addresses(&format!("[{}]", ifaces.join(","))).expect("addresses"),
        routes,
        neighbours: parse_neighbours(
            r#"[{"dst":"10.88.0.1","dev":"eth0","lladdr":"ee:ee:ee:ee:ee:ee"}]"#,
        )
        .expect("neighbours"),
    }
}

async fn vm(hv: &FakeHypervisor, machine: MachineType) -> Box<dyn Vm> {
    let d = tempfile::tempdir().expect("tempdir");
    let cfg = crate::config::parse(
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n",
        Path::new("/test.toml"),
    )
    .expect("config");
    let mut vc = crate::sandbox::vm_config(
        "sb",
        &crate::persist::SandboxPaths::new(d.path(), "sb"),
        &cfg,
    );
    vc.machine = machine;
    hv.launch(vc, &Default::default()).await.expect("launch")
}

fn methods(agent: &FakeAgent) -> Vec<&'static str> {
    agent.calls().iter().map(AgentCall::method).collect()
}

#[test]
fn only_unattached_unrefused_interfaces_are_new() {
    let net = network(&[ETH0, NET1], false);
    let attached = [Attached {
        name: "eth0".into(),
        mac: "ca:fe:00:00:00:01".into(),
        tap: "tap0_kata".into(),
    }];
    let new: Vec<&str> = new_interfaces(&attached, &[], &net)
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(new, ["net1"]);
    assert!(new_interfaces(&attached, &["ca:fe:00:00:00:02".into()], &net).is_empty());
    // Matched by MAC: a renamed interface is the same one.
    let renamed = PodNetwork {
        interfaces: vec![Interface {
            name: "eth9".into(),
            ..net.interfaces[0].clone()
        }],
        ..PodNetwork::default()
    };
    assert!(new_interfaces(&attached, &[], &renamed).is_empty());
}

#[tokio::test]
async fn boot_then_a_second_interface_and_an_ipv6_address_after_boot() {
    let taps = Arc::new(FakeTaps::default());
    let hv = FakeHypervisor::default();
    let vm = vm(&hv, MachineType::Q35).await;
    let agent = FakeAgent::new();
    let boot = network(&[ETH0], false);
    let mut pod = PodNet::new(Path::new("/run/netns/x"), taps.clone())
        .with_boot_taps(&boot)
        .await
        .expect("boot taps");
    assert_eq!(pod.nics().len(), 1);
    assert_eq!(pod.nics()[0].tap, "tap0_kata");
    pod.configure_guest(&agent, &boot).await.expect("guest");
    assert_eq!(
        methods(&agent),
        ["UpdateInterface", "UpdateRoutes", "AddARPNeighbors"]
    );

    // Nothing changed: nothing is sent again.
    assert!(!pod.apply(&boot, vm.as_ref(), &agent).await.expect("sync"));
    assert_eq!(agent.calls().len(), 3);

    // net1 appears, eth0 gets an IPv6 address and route.
    let later = network(&[ETH0_V6, NET1], true);
    assert!(pod.apply(&later, vm.as_ref(), &agent).await.expect("sync"));
    assert_eq!(
        hv.calls().last(),
        Some(&VmCall::HotplugNic {
            id: "sb".into(),
            tap: "tap1_kata".into(),
            mac: "ca:fe:00:00:00:02".into()
        })
    );
    assert_eq!(
        taps.calls(),
        ["attach tap0_kata eth0 1500", "attach tap1_kata net1 1400"]
    );
    let calls = agent.calls();
    let updated: Vec<String> = calls
        .iter()
        .filter_map(|c| match c {
            AgentCall::UpdateInterface(i) => Some(format!("{} {}", i.name, i.IPAddresses.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        updated,
        ["eth0 1", "eth0 2", "net1 1"],
        "eth0 again for its v6 address"
    );
    let Some(AgentCall::UpdateRoutes(routes)) =
        calls.iter().rev().find(|c| c.method() == "UpdateRoutes")
    else {
        panic!("no UpdateRoutes: {calls:?}");
    };
    let dests: Vec<&str> = routes.iter().map(|r| r.dest.as_str()).collect();
    assert_eq!(
        dests,
        ["", "192.168.77.0/24", "fd00:8::/64"],
        "net1's and the v6 route too"
    );
    assert_eq!(
        methods(&agent)
            .iter()
            .filter(|m| **m == "AddARPNeighbors")
            .count(),
        1,
        "neighbour sent once"
    );

    pod.teardown().await;
    assert_eq!(
        &taps.calls()[2..],
        ["detach tap0_kata eth0", "detach tap1_kata net1"],
        "every tap removed"
    );
}

#[tokio::test]
async fn microvm_leaves_late_interfaces_out_and_removes_their_tap() {
    let taps = Arc::new(FakeTaps::default());
    let hv = FakeHypervisor::default();
    let vm = vm(&hv, MachineType::Microvm).await;
    let agent = FakeAgent::new();
    let mut pod = PodNet::new(Path::new("/run/netns/x"), taps.clone());
    let later = network(&[ETH0, NET1], false);
    pod.apply(&later, vm.as_ref(), &agent)
        .await
        .expect("not an error");
    assert!(pod.attached().is_empty());
    assert_eq!(
        taps.calls(),
        [
            "attach tap0_kata eth0 1500",
            "detach tap0_kata eth0",
            "attach tap1_kata net1 1400",
            "detach tap1_kata net1"
        ]
    );
    assert!(methods(&agent).iter().all(|m| *m != "UpdateInterface"));
    // Refused once: not tried again.
    pod.apply(&later, vm.as_ref(), &agent).await.expect("again");
    assert_eq!(taps.calls().len(), 4);
}

#[tokio::test]
async fn a_failed_hotplug_or_tap_leaves_no_tap() {
    let taps = Arc::new(FakeTaps {
        fail: vec!["tap1_kata".into()],
        ..Default::default()
    });
    let hv = FakeHypervisor::default();
    let vm = vm(&hv, MachineType::Q35).await;
    let agent = FakeAgent::new();
    // Boot: the second tap fails, the first is removed again.
    let boot = network(&[ETH0, NET1], false);
    let err = PodNet::new(Path::new("/run/netns/x"), taps.clone())
        .with_boot_taps(&boot)
        .await
        .expect_err("tap1 fails");
    assert!(err.to_string().contains("scripted"), "{err}");
    assert_eq!(
        taps.calls(),
        [
            "attach tap0_kata eth0 1500",
            "attach tap1_kata net1 1400",
            "detach tap0_kata eth0"
        ]
    );
    // After boot: a VM that died refuses the hotplug; the tap goes.
    let taps = Arc::new(FakeTaps::default());
    let mut pod = PodNet::new(Path::new("/run/netns/x"), taps.clone());
    hv.vms()[0].exit("killed");
    assert!(pod.apply(&boot, vm.as_ref(), &agent).await.is_err());
    assert_eq!(
        taps.calls(),
        ["attach tap0_kata eth0 1500", "detach tap0_kata eth0"]
    );
    assert!(pod.attached().is_empty());
}
