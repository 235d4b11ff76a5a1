//! Pod networking in the guest: UpdateInterface, UpdateRoutes,
//! ListInterfaces, ListRoutes and AddARPNeighbors ([`neigh`]) over rtnetlink.
//!
//! The shim gives the VM's virtio-net NIC the MAC of the pod's veth, so the
//! interface to configure is found by MAC (as upstream kata does), then
//! renamed, given the pod's addresses and MTU, and brought up. `rtnetlink`
//! (a maintained pure-Rust netlink client on tokio) replaces iproute2, which
//! the initramfs does not carry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use futures_util::TryStreamExt;
use protocols::types::{IPAddress, IPFamily, Interface, Route};
use rtnetlink::packet_route::address::{AddressAttribute, AddressHeaderFlags, AddressMessage};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::error::{Error, Result};

mod neigh;
pub use neigh::add_arp_neighbors;

pub(super) fn nl_err(context: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let context = context.into();
    move |e| Error::Internal(format!("{context}: {e}"))
}

pub(super) async fn handle() -> Result<Handle> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// `RTNH_F_ONLINK` in `Route.flags`.
pub const RTNH_F_ONLINK: u32 = 4;

/// An interface name the kernel takes (IFNAMSIZ, no `/`, `:` or space).
fn validate_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(Error::InvalidArgument(format!(
            "{name:?} is not an interface name"
        )));
    }
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff` → bytes.
pub fn parse_mac(mac: &str) -> Result<Vec<u8>> {
    let bytes: Option<Vec<u8>> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).ok().filter(|_| b.len() == 2))
        .collect();
    match bytes {
        Some(b) if b.len() == 6 => Ok(b),
        _ => Err(Error::InvalidArgument(format!(
            "hwAddr {mac:?} is not a MAC address"
        ))),
    }
}

fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An `IPAddress` (kata puts the prefix length in `mask`) → address + prefix.
pub fn parse_address(a: &IPAddress) -> Result<(IpAddr, u8)> {
    let ip: IpAddr = a
        .address
        .parse()
        .map_err(|_| Error::InvalidArgument(format!("{:?} is not an IP address", a.address)))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match a.mask.as_str() {
        "" => max,
        m => m.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
            Error::InvalidArgument(format!("mask {m:?} of {} is not a prefix length", ip))
        })?,
    };
    Ok((ip, prefix))
}

/// A route destination: `""`/`default` → none, else `addr/prefix`.
pub fn parse_dest(dest: &str, family: IPFamily) -> Result<(IpAddr, u8)> {
    if dest.is_empty() || dest == "default" {
        let any = match family {
            IPFamily::v4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IPFamily::v6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        return Ok((any, 0));
    }
    let (addr, mask) = dest.split_once('/').unwrap_or((dest, ""));
    parse_address(&IPAddress {
        address: addr.to_owned(),
        mask: mask.to_owned(),
        ..Default::default()
    })
}

pub(super) async fn links(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing links"))
}

pub(super) fn link_name(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

fn link_mac(l: &LinkMessage) -> Option<Vec<u8>> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.clone()),
        _ => None,
    })
}

async fn addresses_of(h: &Handle, index: u32) -> Result<Vec<AddressMessage>> {
    h.address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl_err("listing addresses"))
}

fn to_ip_address(m: &AddressMessage) -> Option<IPAddress> {
    let ip = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })?;
    Some(IPAddress {
        family: if ip.is_ipv4() {
            IPFamily::v4
        } else {
            IPFamily::v6
        }
        .into(),
        address: ip.to_string(),
        mask: m.header.prefix_len.to_string(),
        ..Default::default()
    })
}

async fn to_interface(h: &Handle, l: &LinkMessage) -> Result<Interface> {
    let addrs = addresses_of(h, l.header.index).await?;
    Ok(Interface {
        name: link_name(l),
        hwAddr: link_mac(l).map(|m| format_mac(&m)).unwrap_or_default(),
        mtu: l
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(u64::from(*m)),
                _ => None,
            })
            .unwrap_or_default(),
        IPAddresses: addrs.iter().filter_map(to_ip_address).collect(),
        raw_flags: l.header.flags.bits(),
        ..Default::default()
    })
}

const MODULES_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a NIC may take to appear: after its driver loaded (boot), or
/// after the host hot-plugged it (the guest finds it by a PCI rescan; under
/// TCG on a busy host that takes seconds).
const LINK_APPEAR_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a NIC before rescanning the PCI bus for it.
const RESCAN_AFTER: Duration = Duration::from_millis(300);
/// Between two rescans while the NIC is still missing.
const RESCAN_EVERY: Duration = Duration::from_secs(2);

/// Enumerates PCI devices the kernel has not seen: a NIC hot-plugged into
/// a root port. The guest kernel has no PCIe hotplug driver (pciehp) and the
/// host's root ports have no power controller, so the device is there to be
/// found but nobody is told; a rescan is what upstream's agent does too.
async fn rescan_pci() {
    let r = crate::blocking::run(|| {
        std::fs::write("/sys/bus/pci/rescan", "1")
            .map_err(|e| Error::io("writing /sys/bus/pci/rescan", e))
    })
    .await;
    if let Err(e) = r {
        tracing::debug!("PCI rescan: {e}");
    }
}

async fn find_by_mac(h: &Handle, mac: &[u8]) -> Result<Option<LinkMessage>> {
    let start = tokio::time::Instant::now();
    let mut next_rescan = start + RESCAN_AFTER;
    loop {
        let found = links(h)
            .await?
            .into_iter()
            .find(|l| link_mac(l).as_deref() == Some(mac));
        let now = tokio::time::Instant::now();
        if found.is_some() || now >= start + LINK_APPEAR_TIMEOUT {
            return Ok(found);
        }
        if now >= next_rescan {
            rescan_pci().await;
            next_rescan = now + RESCAN_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frees `name` for the link `index`: another link holding it (a NIC the
/// kernel named `eth1` that the host calls something else, not configured
/// yet) is renamed `kata<its index>`; its own UpdateInterface names it later.
async fn free_name(h: &Handle, name: &str, index: u32) -> Result<()> {
    let holder = links(h)
        .await?
        .into_iter()
        .find(|l| l.header.index != index && link_name(l) == name);
    if let Some(other) = holder {
        let i = other.header.index;
        let temp = format!("kata{i}");
        tracing::info!(name, from = i, to = %temp, "renaming a link out of the way");
        h.link()
            .set(LinkUnspec::new_with_index(i).down().name(temp).build())
            .execute()
            .await
            .map_err(nl_err(format!("renaming link {i} out of the way")))?;
    }
    Ok(())
}

/// Configures the NIC whose MAC is `iface.hwAddr`: name, MTU, exactly the
/// given addresses, up. Answers the interface as it now is.
pub async fn update_interface(iface: &Interface) -> Result<Interface> {
    let mac = parse_mac(&iface.hwAddr)?;
    let wanted: Vec<(IpAddr, u8)> = iface
        .IPAddresses
        .iter()
        .map(parse_address)
        .collect::<Result<_>>()?;
    // virtio_net is among the modules loaded in the background at boot.
    let _ = tokio::task::spawn_blocking(|| crate::init::wait_for_modules(MODULES_TIMEOUT)).await;
    let h = handle().await?;
    let link = find_by_mac(&h, &mac)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no interface with hwAddr {}", iface.hwAddr)))?;
    let index = link.header.index;
    // Only a rename takes the link down: a configured link that went down
    // would lose its routes (the kernel flushes them), and an update of a
    // running pod's NIC (an address added later) must not cut it off.
    let rename = !iface.name.is_empty() && iface.name != link_name(&link);
    let mut msg = LinkUnspec::new_with_index(index);
    if rename {
        validate_name(&iface.name)?;
        free_name(&h, &iface.name, index).await?;
        msg = msg.down().name(iface.name.clone());
    }
    if iface.mtu > 0 {
        let mtu = u32::try_from(iface.mtu)
            .map_err(|_| Error::InvalidArgument(format!("mtu {} too large", iface.mtu)))?;
        msg = msg.mtu(mtu);
    }
    h.link()
        .set(msg.build())
        .execute()
        .await
        .map_err(nl_err(format!("configuring link {index}")))?;
    // Exactly the wanted addresses, without removing one that stays (its
    // routes would go with it).
    for old in addresses_of(&h, index).await? {
        let keep = to_ip_address(&old)
            .and_then(|a| parse_address(&a).ok())
            .is_some_and(|a| wanted.contains(&a));
        if old.header.scope != rtnetlink::packet_route::address::AddressScope::Link && !keep {
            h.address()
                .del(old)
                .execute()
                .await
                .map_err(nl_err("removing an old address"))?;
        }
    }
    for (ip, prefix) in wanted {
        let mut add = h.address().add(index, ip, prefix).replace();
        if ip.is_ipv6() {
            // The pod's IPv6 address was the host veth's already (its DAD
            // is done); left tentative here, routes naming it as source
            // would be refused for a second or more.
            add.message_mut().header.flags |= AddressHeaderFlags::Nodad;
        }
        add.execute()
            .await
            .map_err(nl_err(format!("adding {ip}/{prefix}")))?;
    }
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl_err(format!("bringing link {index} up")))?;
    tracing::info!(name = %iface.name, mac = %iface.hwAddr, "interface configured");
    let link = links(&h)
        .await?
        .into_iter()
        .find(|l| l.header.index == index)
        .ok_or_else(|| Error::Internal(format!("link {index} vanished")))?;
    to_interface(&h, &link).await
}

/// Every interface but loopback.
pub async fn list_interfaces() -> Result<Vec<Interface>> {
    let h = handle().await?;
    let mut out = Vec::new();
    for l in links(&h).await? {
        if !l.header.flags.contains(LinkFlags::Loopback) {
            out.push(to_interface(&h, &l).await?);
        }
    }
    Ok(out)
}

fn route_message(r: &Route, index: u32) -> Result<RouteMessage> {
    let family = r.family.enum_value_or_default();
    let (dest, prefix) = parse_dest(&r.dest, family)?;
    let bad = |e: &dyn std::fmt::Display| Error::InvalidArgument(format!("route {r:?}: {e}"));
    let mut b = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dest, prefix)
        .map_err(|e| bad(&e))?
        .output_interface(index)
        .scope(RouteScope::from(u8::try_from(r.scope).unwrap_or(0)));
    if !r.gateway.is_empty() {
        let gw: IpAddr = r.gateway.parse().map_err(|_| {
            Error::InvalidArgument(format!("gateway {:?} is not an IP address", r.gateway))
        })?;
        b = b.gateway(gw).map_err(|e| bad(&e))?;
    }
    if !r.source.is_empty() {
        let src: IpAddr = r.source.parse().map_err(|_| {
            Error::InvalidArgument(format!("source {:?} is not an IP address", r.source))
        })?;
        b = b.pref_source(src).map_err(|e| bad(&e))?;
    }
    let mut m = b.build();
    // RTNH_F_ONLINK: a gateway outside every connected prefix (Calico's
    // 169.254.1.1); the only flag the host sends.
    if r.flags & RTNH_F_ONLINK != 0 {
        m.header.flags |= RouteFlags::Onlink;
    }
    Ok(m)
}

async fn routes(h: &Handle) -> Result<Vec<RouteMessage>> {
    let mut all = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        let mut q = RouteMessageBuilder::<IpAddr>::new().build();
        q.header.address_family = family;
        let mut got: Vec<RouteMessage> = h
            .route()
            .get(q)
            .execute()
            .try_collect()
            .await
            .map_err(nl_err("listing routes"))?;
        // The main table only (local/broadcast routes are the kernel's).
        got.retain(|m| m.header.table == 254);
        all.extend(got);
    }
    Ok(all)
}

fn route_addr(a: &RouteAddress) -> String {
    match a {
        RouteAddress::Inet(v4) => v4.to_string(),
        RouteAddress::Inet6(v6) => v6.to_string(),
        _ => String::new(),
    }
}

fn to_route(m: &RouteMessage, names: &[(u32, String)]) -> Route {
    let mut r = Route {
        family: if m.header.address_family == AddressFamily::Inet6 {
            IPFamily::v6
        } else {
            IPFamily::v4
        }
        .into(),
        scope: u8::from(m.header.scope).into(),
        ..Default::default()
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                r.dest = format!("{}/{}", route_addr(d), m.header.destination_prefix_length)
            }
            RouteAttribute::Gateway(g) => r.gateway = route_addr(g),
            RouteAttribute::PrefSource(s) => r.source = route_addr(s),
            RouteAttribute::Oif(i) => {
                r.device = names
                    .iter()
                    .find(|(idx, _)| idx == i)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default()
            }
            _ => {}
        }
    }
    r
}

async fn link_names(h: &Handle) -> Result<Vec<(u32, String)>> {
    Ok(links(h)
        .await?
        .iter()
        .map(|l| (l.header.index, link_name(l)))
        .collect())
}

/// The main table's routes as ListRoutes and UpdateRoutes answer them
/// (IPv6 link-local and multicast left out).
async fn current_routes(h: &Handle) -> Result<Vec<Route>> {
    let names = link_names(h).await?;
    Ok(routes(h)
        .await?
        .iter()
        .map(|m| to_route(m, &names))
        .filter(|r| !r.dest.starts_with("fe80:") && !r.dest.starts_with("ff00:"))
        .collect())
}

pub async fn list_routes() -> Result<Vec<Route>> {
    current_routes(&handle().await?).await
}

/// Makes the main table hold the given routes: routes the shim did not ask
/// for (but the kernel's own) are removed, the asked ones added or replaced,
/// routes without a gateway first so that gateways are reachable.
pub async fn update_routes(wanted: &[Route]) -> Result<Vec<Route>> {
    let h = handle().await?;
    let names = link_names(&h).await?;
    let index_of = |dev: &str| {
        names
            .iter()
            .find(|(_, n)| n == dev)
            .map(|(i, _)| *i)
            .ok_or_else(|| Error::InvalidArgument(format!("route device {dev:?} does not exist")))
    };
    let mut msgs = Vec::new();
    for r in wanted {
        msgs.push((
            r.gateway.is_empty(),
            route_message(r, index_of(&r.device)?)?,
        ));
    }
    for old in routes(&h).await? {
        if old.header.protocol != RouteProtocol::Kernel {
            h.route()
                .del(old)
                .execute()
                .await
                .map_err(nl_err("removing an old route"))?;
        }
    }
    msgs.sort_by_key(|(direct, _)| !direct);
    for (_, m) in msgs {
        h.route()
            .add(m)
            .replace()
            .execute()
            .await
            .map_err(nl_err("adding a route"))?;
    }
    tracing::info!(routes = wanted.len(), "routes configured");
    current_routes(&h).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("ca:fe:00:00:00:0A").expect("valid"),
            vec![0xca, 0xfe, 0, 0, 0, 0x0a]
        );
        for bad in ["", "ca:fe", "ca:fe:00:00:00:0g", "ca:fe:00:00:00:000"] {
            assert!(
                matches!(parse_mac(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
        assert_eq!(format_mac(&[0xca, 0xfe, 0, 0, 0, 1]), "ca:fe:00:00:00:01");
    }

    #[test]
    fn addresses_take_the_prefix_from_mask() {
        let a = |address: &str, mask: &str| IPAddress {
            address: address.into(),
            mask: mask.into(),
            ..Default::default()
        };
        assert_eq!(
            parse_address(&a("10.88.0.5", "16")).expect("valid"),
            ("10.88.0.5".parse().expect("ip"), 16)
        );
        assert_eq!(parse_address(&a("fd00::5", "")).expect("valid").1, 128);
        assert!(parse_address(&a("10.88.0.5", "33")).is_err());
        assert!(parse_address(&a("10.88.0.300", "16")).is_err());
    }

    #[test]
    fn destinations() {
        assert_eq!(
            parse_dest("", IPFamily::v4).expect("default"),
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
        );
        assert_eq!(
            parse_dest("10.88.0.0/16", IPFamily::v4).expect("net"),
            ("10.88.0.0".parse().expect("ip"), 16)
        );
        assert!(parse_dest("10.88.0.0/x", IPFamily::v4).is_err());
    }

    #[test]
    fn route_without_device_index_is_built_with_scope_and_gateway() {
        let m = route_message(
            &Route {
                dest: String::new(),
                gateway: "10.88.0.1".into(),
                device: "eth0".into(),
                ..Default::default()
            },
            2,
        )
        .expect("valid");
        assert_eq!(m.header.address_family, AddressFamily::Inet);
        assert_eq!(m.header.destination_prefix_length, 0);
        assert!(m
            .attributes
            .contains(&RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 88, 0, 1
            )))));
        assert!(m.attributes.contains(&RouteAttribute::Oif(2)));
        let bad = route_message(
            &Route {
                gateway: "nope".into(),
                ..Default::default()
            },
            2,
        );
        assert!(matches!(bad, Err(Error::InvalidArgument(_))));
    }
}
