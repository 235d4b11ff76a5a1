//! Pod networking, host side: what CNI configured in the
//! pod's network namespace, and a tap device there that carries the pod's
//! traffic to the VM's virtio-net NIC.
//!
//! Model (upstream kata's "tcfilter"): CNI gives the pod netns a veth
//! (`eth0`) with addresses and routes. We create `tap0_kata` in the same
//! netns and redirect every frame between `eth0` and the tap with tc
//! `mirred`, so the guest NIC (same MAC as `eth0`) owns the pod's IP. QEMU
//! opens the tap by name, so it must be started inside the netns (or be
//! handed an fd opened there). The guest then gets `eth0`'s addresses and the
//! routes through the agent's UpdateInterface / UpdateRoutes.
//!
//! Everything runs `ip`/`tc` (iproute2) through `nsenter --net=<netns>`;
//! nothing touches the host's own namespace.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::process::Command;

/// Name of the tap device the shim creates in the pod's netns.
pub const TAP_NAME: &str = "tap0_kata";

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("running {cmd}: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cmd} failed: {stderr}")]
    Failed { cmd: String, stderr: String },
    #[error("unexpected output of {cmd}: {source}")]
    Parse {
        cmd: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T> = std::result::Result<T, NetworkError>;

/// One address of an interface (`10.88.0.5/16`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddress {
    pub address: String,
    pub prefix_len: u8,
    /// 4 or 6.
    pub family: u8,
}

/// An interface of the pod's netns as CNI left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<IpAddress>,
}

/// A route of the pod's netns (`dest` empty = default route).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dest: String,
    pub gateway: String,
    pub device: String,
    pub source: String,
    pub scope: String,
}

/// What the guest must be told about.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodNetwork {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
}

/// The network namespace path of an OCI spec (CRI: `/var/run/netns/cni-…`).
pub fn netns_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
        .and_then(|n| n.path().clone())
}

async fn in_netns(netns: &Path, args: &[&str]) -> Result<String> {
    let cmd = format!("nsenter --net={} {}", netns.display(), args.join(" "));
    let out = Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .args(args)
        .output()
        .await
        .map_err(|source| NetworkError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NetworkError::Failed {
            cmd,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Interfaces (loopback and our own tap excluded) and routes of `netns`.
pub async fn scan(netns: &Path) -> Result<PodNetwork> {
    let addrs = in_netns(netns, &["ip", "-j", "address", "show"]).await?;
    let mut routes = in_netns(netns, &["ip", "-j", "route", "show"]).await?;
    let v6 = in_netns(netns, &["ip", "-j", "-6", "route", "show"]).await?;
    let interfaces = parse_addresses(&addrs).map_err(|source| NetworkError::Parse {
        cmd: "ip -j address show".into(),
        source,
    })?;
    let mut parsed = parse_routes(&routes).map_err(|source| NetworkError::Parse {
        cmd: "ip -j route show".into(),
        source,
    })?;
    routes.clear();
    parsed.extend(
        parse_routes(&v6)
            .map_err(|source| NetworkError::Parse {
                cmd: "ip -j -6 route show".into(),
                source,
            })?
            .into_iter()
            // Link-local and multicast routes the guest kernel makes itself.
            .filter(|r| !r.dest.starts_with("fe80:") && !r.dest.starts_with("ff00:")),
    );
    Ok(PodNetwork {
        interfaces,
        routes: parsed,
    })
}

/// Parses `ip -j address show`.
pub fn parse_addresses(json: &str) -> std::result::Result<Vec<Interface>, serde_json::Error> {
    let v: Vec<Value> = serde_json::from_str(json)?;
    Ok(v.iter()
        .filter(|i| i["link_type"] != "loopback" && i["ifname"] != TAP_NAME)
        .map(|i| Interface {
            name: i["ifname"].as_str().unwrap_or_default().to_owned(),
            mac: i["address"].as_str().unwrap_or_default().to_owned(),
            mtu: i["mtu"].as_u64().unwrap_or(1500) as u32,
            addresses: i["addr_info"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x["scope"] != "link")
                        .map(|x| IpAddress {
                            address: x["local"].as_str().unwrap_or_default().to_owned(),
                            prefix_len: x["prefixlen"].as_u64().unwrap_or(0) as u8,
                            family: if x["family"] == "inet6" { 6 } else { 4 },
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// Parses `ip -j route show`.
pub fn parse_routes(json: &str) -> std::result::Result<Vec<Route>, serde_json::Error> {
    let v: Vec<Value> = serde_json::from_str(json)?;
    let s = |x: &Value| x.as_str().unwrap_or_default().to_owned();
    Ok(v.iter()
        .map(|r| Route {
            dest: if r["dst"] == "default" {
                String::new()
            } else {
                s(&r["dst"])
            },
            gateway: s(&r["gateway"]),
            device: s(&r["dev"]),
            source: s(&r["prefsrc"]),
            scope: s(&r["scope"]),
        })
        .collect())
}

/// Creates `tap0_kata` in `netns` and redirects all traffic between `iface`
/// and it (both directions, tc ingress + mirred). Idempotent enough for a
/// retried boot: an existing tap is reused.
pub async fn attach_tap(netns: &Path, iface: &Interface) -> Result<()> {
    let mtu = iface.mtu.to_string();
    if in_netns(netns, &["ip", "link", "show", TAP_NAME])
        .await
        .is_err()
    {
        in_netns(netns, &["ip", "tuntap", "add", TAP_NAME, "mode", "tap"]).await?;
    }
    in_netns(netns, &["ip", "link", "set", TAP_NAME, "mtu", &mtu, "up"]).await?;
    for (from, to) in [
        (iface.name.as_str(), TAP_NAME),
        (TAP_NAME, iface.name.as_str()),
    ] {
        let _ = in_netns(netns, &["tc", "qdisc", "del", "dev", from, "ingress"]).await;
        in_netns(netns, &["tc", "qdisc", "add", "dev", from, "ingress"]).await?;
        in_netns(
            netns,
            &[
                "tc", "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )
        .await?;
    }
    Ok(())
}

/// Removes the tap (and with it the redirect filters pointing at it).
pub async fn detach_tap(netns: &Path, iface: &str) -> Result<()> {
    let _ = in_netns(netns, &["tc", "qdisc", "del", "dev", iface, "ingress"]).await;
    in_netns(netns, &["ip", "link", "del", TAP_NAME])
        .await
        .map(|_| ())
}

/// Scans `netns` and attaches the tap to its first interface with an
/// address; what the sandbox boot calls before launching QEMU (in `netns`,
/// `-netdev tap,ifname=tap0_kata` + `-device virtio-net-pci,mac=<mac>`), and
/// whose result it sends to the guest after CreateSandbox.
pub async fn prepare(netns: &Path) -> Result<Option<(Interface, PodNetwork)>> {
    let net = scan(netns).await?;
    let Some(iface) = net
        .interfaces
        .iter()
        .find(|i| !i.addresses.is_empty())
        .cloned()
    else {
        return Ok(None);
    };
    attach_tap(netns, &iface).await?;
    Ok(Some((iface, net)))
}

fn ip_family(addr: &str) -> protocols::types::IPFamily {
    if addr.contains(':') {
        protocols::types::IPFamily::v6
    } else {
        protocols::types::IPFamily::v4
    }
}

/// The agent's view of the pod interface: found by MAC in the guest, given
/// the name, MTU and addresses CNI gave the veth.
pub fn guest_interface(iface: &Interface) -> protocols::types::Interface {
    protocols::types::Interface {
        device: iface.name.clone(),
        name: iface.name.clone(),
        hwAddr: iface.mac.clone(),
        mtu: iface.mtu.into(),
        IPAddresses: iface
            .addresses
            .iter()
            .map(|a| protocols::types::IPAddress {
                family: ip_family(&a.address).into(),
                address: a.address.clone(),
                // Kata carries the prefix length in `mask`.
                mask: a.prefix_len.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The routes of `device`, for the agent's UpdateRoutes.
pub fn guest_routes(net: &PodNetwork, device: &str) -> Vec<protocols::types::Route> {
    net.routes
        .iter()
        .filter(|r| r.device == device)
        .map(|r| protocols::types::Route {
            dest: r.dest.clone(),
            gateway: r.gateway.clone(),
            device: r.device.clone(),
            source: r.source.clone(),
            // rtnetlink scope values (RT_SCOPE_*).
            scope: match r.scope.as_str() {
                "link" => 253,
                "host" => 254,
                "site" => 200,
                _ => 0,
            },
            family: ip_family(if r.dest.is_empty() {
                &r.gateway
            } else {
                &r.dest
            })
            .into(),
            ..Default::default()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_view_of_the_pod_network() {
        let iface = parse_addresses(ADDRS).expect("valid").remove(0);
        let g = guest_interface(&iface);
        assert_eq!(g.name, "eth0");
        assert_eq!(g.hwAddr, "ca:fe:00:00:00:01");
        assert_eq!(g.mtu, 1500);
        assert_eq!(g.IPAddresses.len(), 1);
        assert_eq!(g.IPAddresses[0].address, "10.247.0.5");
        assert_eq!(g.IPAddresses[0].mask, "16");
        let net = PodNetwork {
            interfaces: vec![iface],
            routes: parse_routes(
                r#"[{"dst":"default","gateway":"10.247.0.1","dev":"eth0","flags":[]},
                    {"dst":"10.247.0.0/16","dev":"eth0","scope":"link","prefsrc":"10.247.0.5"},
                    {"dst":"192.168.9.0/24","dev":"other","scope":"link"}]"#,
            )
            .expect("valid"),
        };
        let r = guest_routes(&net, "eth0");
        assert_eq!(r.len(), 2, "only eth0's routes: {r:?}");
        assert_eq!(
            (r[0].dest.as_str(), r[0].gateway.as_str(), r[0].scope),
            ("", "10.247.0.1", 0)
        );
        assert_eq!((r[1].dest.as_str(), r[1].scope), ("10.247.0.0/16", 253));
    }

    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,"link_type":"loopback",
       "address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":2,"link_index":9,"ifname":"eth0","flags":["BROADCAST","UP"],"mtu":1500,
       "link_type":"ether","address":"ca:fe:00:00:00:01","addr_info":[
         {"family":"inet","local":"10.247.0.5","prefixlen":16,"scope":"global"},
         {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;

    #[test]
    fn addresses_skip_loopback_and_link_local() {
        let ifs = parse_addresses(ADDRS).expect("valid");
        assert_eq!(
            ifs,
            vec![Interface {
                name: "eth0".into(),
                mac: "ca:fe:00:00:00:01".into(),
                mtu: 1500,
                addresses: vec![IpAddress {
                    address: "10.247.0.5".into(),
                    prefix_len: 16,
                    family: 4
                }],
            }]
        );
    }

    #[test]
    fn routes_with_default() {
        let r = parse_routes(
            r#"[{"dst":"default","gateway":"10.247.0.1","dev":"eth0","flags":[]},
                {"dst":"10.247.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.247.0.5","flags":[]}]"#,
        )
        .expect("valid");
        assert_eq!(r[0].dest, "");
        assert_eq!(r[0].gateway, "10.247.0.1");
        assert_eq!(r[1].dest, "10.247.0.0/16");
        assert_eq!(r[1].scope, "link");
        assert_eq!(r[1].source, "10.247.0.5");
    }
}
