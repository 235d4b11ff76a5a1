//! What the pod's network namespace holds: interfaces with their addresses
//! and MTU, routes (IPv4 and IPv6), permanent neighbour entries, read with
//! `ip -j` (iproute2's JSON) inside the namespace.

use std::path::Path;

use serde_json::Value;

use super::{in_netns, is_our_tap, NetworkError, Result};

/// One address of an interface (`10.88.0.5/16`, `fd00::5/64`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAddress {
    pub address: String,
    pub prefix_len: u8,
    /// 4 or 6.
    pub family: u8,
}

/// An interface of the pod's netns (CNI's veth, a second network's, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// Link-local addresses left out: the guest makes its own.
    pub addresses: Vec<IpAddress>,
}

/// A route of the pod's netns (`dest` empty = default route).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    pub dest: String,
    pub gateway: String,
    pub device: String,
    pub source: String,
    pub scope: String,
    /// `ip`'s `protocol` (`kernel` for the prefix routes of addresses).
    pub protocol: String,
    /// The gateway is on-link whatever the prefixes say (`onlink`).
    pub onlink: bool,
    /// 4 or 6.
    pub family: u8,
}

/// A permanent neighbour entry (static ARP / NDP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: String,
    pub device: String,
    pub mac: String,
}

/// What the netns holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodNetwork {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
}

fn parse_err(cmd: &str) -> impl FnOnce(serde_json::Error) -> NetworkError + '_ {
    move |source| NetworkError::Parse {
        cmd: cmd.into(),
        source,
    }
}

/// Interfaces (loopback, non-Ethernet and our own taps excluded), routes
/// and permanent neighbours of `netns`.
pub async fn scan(netns: &Path) -> Result<PodNetwork> {
    let addrs = in_netns(netns, &["ip", "-j", "address", "show"]).await?;
    let v4 = in_netns(netns, &["ip", "-j", "-4", "route", "show"]).await?;
    let v6 = in_netns(netns, &["ip", "-j", "-6", "route", "show"]).await?;
    let neigh = in_netns(netns, &["ip", "-j", "neigh", "show", "nud", "permanent"]).await?;
    let mut routes = parse_routes(&v4, 4).map_err(parse_err("ip -j -4 route show"))?;
    routes.extend(parse_routes(&v6, 6).map_err(parse_err("ip -j -6 route show"))?);
    Ok(PodNetwork {
        interfaces: parse_addresses(&addrs).map_err(parse_err("ip -j address show"))?,
        routes,
        neighbours: parse_neighbours(&neigh).map_err(parse_err("ip -j neigh show"))?,
    })
}

/// `ip -j` prints nothing at all (not `[]`) for an empty list.
fn json_list(json: &str) -> std::result::Result<Vec<Value>, serde_json::Error> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Parses `ip -j address show`: Ethernet interfaces only (a netns also
/// holds `sit0`, `ip6tnl0`, ... once IPv6 tunnels are loaded), not ours.
pub fn parse_addresses(json: &str) -> std::result::Result<Vec<Interface>, serde_json::Error> {
    Ok(json_list(json)?
        .iter()
        .filter(|i| i["link_type"] == "ether")
        .map(|i| Interface {
            name: text(&i["ifname"]),
            mac: text(&i["address"]),
            mtu: i["mtu"]
                .as_u64()
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(1500),
            addresses: i["addr_info"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|x| x["scope"] != "link" && x["local"].is_string())
                        .map(|x| IpAddress {
                            address: text(&x["local"]),
                            prefix_len: x["prefixlen"]
                                .as_u64()
                                .and_then(|p| u8::try_from(p).ok())
                                .unwrap_or(0),
                            family: if x["family"] == "inet6" { 6 } else { 4 },
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .filter(|i| !i.name.is_empty() && !is_our_tap(&i.name))
        .collect())
}

/// Parses `ip -j -4|-6 route show` (main table) of `family`. IPv6
/// link-local and multicast routes are left out: the guest's kernel makes
/// its own.
pub fn parse_routes(json: &str, family: u8) -> std::result::Result<Vec<Route>, serde_json::Error> {
    Ok(json_list(json)?
        .iter()
        // Unicast only: `unreachable`, `blackhole`, `local`... are no NIC's.
        .filter(|r| r["type"].is_null() || r["type"] == "unicast")
        .map(|r| Route {
            dest: if r["dst"] == "default" {
                String::new()
            } else {
                text(&r["dst"])
            },
            gateway: text(&r["gateway"]),
            device: text(&r["dev"]),
            source: text(&r["prefsrc"]),
            scope: text(&r["scope"]),
            protocol: text(&r["protocol"]),
            onlink: r["flags"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == "onlink")),
            family,
        })
        .filter(|r| !r.device.is_empty())
        .filter(|r| !r.dest.starts_with("fe80:") && !r.dest.starts_with("ff00:"))
        .collect())
}

/// Parses `ip -j neigh show nud permanent` (both families).
pub fn parse_neighbours(json: &str) -> std::result::Result<Vec<Neighbour>, serde_json::Error> {
    Ok(json_list(json)?
        .iter()
        .map(|n| Neighbour {
            ip: text(&n["dst"]),
            device: text(&n["dev"]),
            mac: text(&n["lladdr"]),
        })
        .filter(|n| !n.ip.is_empty() && !n.device.is_empty() && !n.mac.is_empty())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"mtu":65536,"link_type":"loopback",
       "address":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":2,"link_index":9,"ifname":"eth0","flags":["BROADCAST","UP"],"mtu":1500,
       "link_type":"ether","address":"ca:fe:00:00:00:01","addr_info":[
         {"family":"inet","local":"10.247.0.5","prefixlen":16,"scope":"global"},
         {"family":"inet6","local":"fd00:1::5","prefixlen":64,"scope":"global"},
         {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]},
      {"ifindex":3,"ifname":"sit0","flags":["NOARP"],"mtu":1480,"link_type":"sit",
       "address":"0.0.0.0","addr_info":[]},
      {"ifindex":4,"ifname":"net1","flags":["BROADCAST","UP"],"mtu":9000,
       "link_type":"ether","address":"ca:fe:00:00:00:02","addr_info":[
         {"family":"inet","local":"192.168.77.2","prefixlen":24,"scope":"global"}]},
      {"ifindex":5,"ifname":"tap0_kata","flags":["BROADCAST","UP"],"mtu":1500,
       "link_type":"ether","address":"de:ad:00:00:00:01","addr_info":[]}]"#;

    #[test]
    fn addresses_of_every_ethernet_interface_v4_and_v6() {
        let ifs = parse_addresses(ADDRS).expect("valid");
        let names: Vec<&str> = ifs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["eth0", "net1"], "no lo, sit0 or our tap");
        assert_eq!(
            ifs[0].addresses,
            vec![
                IpAddress {
                    address: "10.247.0.5".into(),
                    prefix_len: 16,
                    family: 4
                },
                IpAddress {
                    address: "fd00:1::5".into(),
                    prefix_len: 64,
                    family: 6
                }
            ],
            "link-local left out"
        );
        assert_eq!(
            (ifs[1].mtu, ifs[1].mac.as_str()),
            (9000, "ca:fe:00:00:00:02")
        );
        assert!(parse_addresses("").expect("empty").is_empty());
        assert!(parse_addresses("{").is_err());
    }

    #[test]
    fn routes_of_both_families() {
        let v4 = parse_routes(
            r#"[{"dst":"default","gateway":"10.247.0.1","dev":"eth0","flags":[]},
                {"dst":"10.247.0.0/16","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.247.0.5","flags":[]},
                {"type":"unreachable","dst":"10.9.0.0/16","flags":[]},
                {"dst":"169.254.1.1","gateway":"169.254.1.1","dev":"eth0","flags":["onlink"]}]"#,
            4,
        )
        .expect("valid");
        assert_eq!(v4.len(), 3, "{v4:?}");
        assert_eq!(
            (v4[0].dest.as_str(), v4[0].gateway.as_str()),
            ("", "10.247.0.1")
        );
        assert_eq!(
            (
                v4[1].scope.as_str(),
                v4[1].source.as_str(),
                v4[1].protocol.as_str()
            ),
            ("link", "10.247.0.5", "kernel")
        );
        assert!(v4[2].onlink && !v4[0].onlink);
        let v6 = parse_routes(
            r#"[{"dst":"fd00:1::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
                {"dst":"fd00:2::/64","gateway":"fd00:1::1","dev":"eth0","metric":1024,"flags":[],"pref":"medium"},
                {"dst":"fe80::/64","dev":"eth0","protocol":"kernel","metric":256,"flags":[],"pref":"medium"},
                {"dst":"default","gateway":"fe80::1","dev":"eth0","metric":1024,"flags":[],"pref":"medium"}]"#,
            6,
        )
        .expect("valid");
        let dests: Vec<&str> = v6.iter().map(|r| r.dest.as_str()).collect();
        assert_eq!(dests, ["fd00:1::/64", "fd00:2::/64", ""]);
        assert!(v6.iter().all(|r| r.family == 6));
        assert_eq!(v6[1].gateway, "fd00:1::1");
        assert!(parse_routes("", 6).expect("empty").is_empty());
    }

    #[test]
    fn permanent_neighbours() {
        let n = parse_neighbours(
            r#"[{"dst":"10.247.0.1","dev":"eth0","lladdr":"ee:ee:ee:ee:ee:ee","state":["PERMANENT"]},
                {"dst":"fd00:1::1","dev":"eth0","lladdr":"ee:ee:ee:ee:ee:01","state":["PERMANENT"]},
                {"dst":"10.247.0.9","dev":"eth0","state":["PERMANENT"]}]"#,
        )
        .expect("valid");
        assert_eq!(n.len(), 2, "an entry without MAC is left out: {n:?}");
        assert_eq!(n[1].ip, "fd00:1::1");
        assert_eq!(n[0].mac, "ee:ee:ee:ee:ee:ee");
    }
}
