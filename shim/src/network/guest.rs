//! The agent's view of the pod network: UpdateInterface per NIC (found by
//! MAC in the guest), UpdateRoutes for the whole table, AddARPNeighbors.

use protocols::types::{self, IPFamily};

use super::scan::{Interface, Neighbour, PodNetwork, Route};

/// `RTNH_F_ONLINK` in `Route.flags`.
const RTNH_F_ONLINK: u32 = 4;
/// `NUD_PERMANENT`.
const NUD_PERMANENT: i32 = 0x80;

fn family_of(addr: &str) -> IPFamily {
    if addr.contains(':') {
        IPFamily::v6
    } else {
        IPFamily::v4
    }
}

/// The guest NIC with `iface`'s MAC gets its name, MTU and addresses.
pub fn interface(iface: &Interface) -> types::Interface {
    types::Interface {
        device: iface.name.clone(),
        name: iface.name.clone(),
        hwAddr: iface.mac.clone(),
        mtu: iface.mtu.into(),
        IPAddresses: iface
            .addresses
            .iter()
            .map(|a| types::IPAddress {
                family: family_of(&a.address).into(),
                address: a.address.clone(),
                // Kata carries the prefix length in `mask`.
                mask: a.prefix_len.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn route(r: &Route) -> types::Route {
    types::Route {
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
        family: if r.family == 6 {
            IPFamily::v6
        } else {
            IPFamily::v4
        }
        .into(),
        flags: if r.onlink { RTNH_F_ONLINK } else { 0 },
        ..Default::default()
    }
}

/// The routes of the attached `devices`, for UpdateRoutes (which replaces
/// the guest's table: every attached device's routes go each time). IPv6
/// prefix routes of addresses (`proto kernel`) are left to the guest's
/// kernel, which makes them with the address; sent too, they would be
/// doubled with another metric.
pub fn routes(net: &PodNetwork, devices: &[&str]) -> Vec<types::Route> {
    net.routes
        .iter()
        .filter(|r| devices.contains(&r.device.as_str()))
        .filter(|r| !(r.family == 6 && r.protocol == "kernel"))
        .map(route)
        .collect()
}

fn neighbour(n: &Neighbour) -> types::ARPNeighbor {
    types::ARPNeighbor {
        toIPAddress: Some(types::IPAddress {
            family: family_of(&n.ip).into(),
            address: n.ip.clone(),
            ..Default::default()
        })
        .into(),
        device: n.device.clone(),
        lladdr: n.mac.clone(),
        state: NUD_PERMANENT,
        ..Default::default()
    }
}

/// The permanent neighbours of the attached `devices`.
pub fn neighbours(list: &[Neighbour], devices: &[&str]) -> Vec<types::ARPNeighbor> {
    list.iter()
        .filter(|n| devices.contains(&n.device.as_str()))
        .map(neighbour)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::scan::{parse_addresses, parse_neighbours, parse_routes};

    #[test]
    fn guest_view_of_the_pod_network() {
        let ifs = parse_addresses(
            r#"[{"ifname":"eth0","mtu":1450,"link_type":"ether","address":"ca:fe:00:00:00:01",
                 "addr_info":[{"family":"inet","local":"10.247.0.5","prefixlen":16,"scope":"global"},
                              {"family":"inet6","local":"fd00:1::5","prefixlen":64,"scope":"global"}]}]"#,
        )
        .expect("valid");
        let g = interface(&ifs[0]);
        assert_eq!(
            (g.name.as_str(), g.hwAddr.as_str(), g.mtu),
            ("eth0", "ca:fe:00:00:00:01", 1450)
        );
        assert_eq!(g.IPAddresses.len(), 2);
        assert_eq!(g.IPAddresses[1].address, "fd00:1::5");
        assert_eq!(g.IPAddresses[1].mask, "64");
        assert_eq!(
            g.IPAddresses[1].family.enum_value_or_default(),
            IPFamily::v6
        );
        let mut routes_ = parse_routes(
            r#"[{"dst":"default","gateway":"10.247.0.1","dev":"eth0","flags":[]},
                {"dst":"10.247.0.0/16","dev":"eth0","scope":"link","prefsrc":"10.247.0.5"},
                {"dst":"169.254.1.1","dev":"eth0","gateway":"169.254.1.1","flags":["onlink"]},
                {"dst":"192.168.9.0/24","dev":"other","scope":"link"}]"#,
            4,
        )
        .expect("valid");
        routes_.extend(
            parse_routes(
                r#"[{"dst":"fd00:1::/64","dev":"eth0","protocol":"kernel"},
                    {"dst":"default","gateway":"fd00:1::1","dev":"eth0"}]"#,
                6,
            )
            .expect("valid"),
        );
        let net = PodNetwork {
            interfaces: ifs,
            routes: routes_,
            neighbours: Vec::new(),
        };
        let r = routes(&net, &["eth0"]);
        assert_eq!(r.len(), 4, "eth0's, without the v6 kernel route: {r:?}");
        assert_eq!(
            (r[0].dest.as_str(), r[0].gateway.as_str(), r[0].scope),
            ("", "10.247.0.1", 0)
        );
        assert_eq!((r[1].dest.as_str(), r[1].scope), ("10.247.0.0/16", 253));
        assert_eq!(r[2].flags, RTNH_F_ONLINK);
        assert_eq!(
            (
                r[3].dest.as_str(),
                r[3].gateway.as_str(),
                r[3].family.enum_value_or_default()
            ),
            ("", "fd00:1::1", IPFamily::v6)
        );
    }

    #[test]
    fn neighbours_of_attached_devices() {
        let list = parse_neighbours(
            r#"[{"dst":"10.247.0.1","dev":"eth0","lladdr":"ee:ee:ee:ee:ee:ee"},
                {"dst":"fd00:1::1","dev":"eth0","lladdr":"ee:ee:ee:ee:ee:01"},
                {"dst":"10.1.0.1","dev":"other","lladdr":"ee:ee:ee:ee:ee:02"}]"#,
        )
        .expect("valid");
        let n = neighbours(&list, &["eth0"]);
        assert_eq!(n.len(), 2);
        assert_eq!(
            n[1].toIPAddress.family.enum_value_or_default(),
            IPFamily::v6
        );
        assert_eq!(
            (n[0].state, n[0].lladdr.as_str()),
            (NUD_PERMANENT, "ee:ee:ee:ee:ee:ee")
        );
    }
}
