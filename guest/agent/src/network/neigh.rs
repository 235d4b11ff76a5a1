//! AddARPNeighbors: static neighbour entries (ARP for IPv4, NDP for IPv6)
//! the host's pod network namespace holds, e.g. a CNI plugin's gateway
//! entry with a fixed MAC. Added or replaced, never removed.

use std::net::IpAddr;

use protocols::types::ARPNeighbor;
use rtnetlink::packet_route::neighbour::{NeighbourFlags, NeighbourState};

use super::{handle, link_name, links, nl_err, parse_mac};
use crate::error::{Error, Result};

/// `NUD_PERMANENT`: what an entry without a state gets.
const NUD_PERMANENT: u16 = 0x80;

/// One neighbour entry, checked: destination, device name, MAC, state, flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub device: String,
    pub mac: Vec<u8>,
    pub state: u16,
    pub flags: u8,
}

/// Checks what the host sent; nothing reaches netlink unchecked.
pub fn parse_neighbour(n: &ARPNeighbor) -> Result<Neighbour> {
    let to = n.toIPAddress.as_ref().ok_or_else(|| {
        Error::InvalidArgument(format!("neighbour on {:?} has no address", n.device))
    })?;
    let ip: IpAddr = to.address.parse().map_err(|_| {
        Error::InvalidArgument(format!("neighbour {:?} is not an IP address", to.address))
    })?;
    if n.device.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "neighbour {ip} names no device"
        )));
    }
    let state = match n.state {
        0 => NUD_PERMANENT,
        s => u16::try_from(s)
            .map_err(|_| Error::InvalidArgument(format!("neighbour {ip}: state {s}")))?,
    };
    let flags = u8::try_from(n.flags)
        .map_err(|_| Error::InvalidArgument(format!("neighbour {ip}: flags {}", n.flags)))?;
    Ok(Neighbour {
        ip,
        device: n.device.clone(),
        mac: parse_mac(&n.lladdr)?,
        state,
        flags,
    })
}

/// Adds (or replaces) every entry; all are checked before the first is added.
pub async fn add_arp_neighbors(neighbours: &[ARPNeighbor]) -> Result<()> {
    let parsed: Vec<Neighbour> = neighbours
        .iter()
        .map(parse_neighbour)
        .collect::<Result<_>>()?;
    if parsed.is_empty() {
        return Ok(());
    }
    let h = handle().await?;
    let names: Vec<(u32, String)> = links(&h)
        .await?
        .iter()
        .map(|l| (l.header.index, link_name(l)))
        .collect();
    for n in &parsed {
        let index = names
            .iter()
            .find(|(_, name)| *name == n.device)
            .map(|(i, _)| *i)
            .ok_or_else(|| {
                Error::InvalidArgument(format!("neighbour device {:?} does not exist", n.device))
            })?;
        h.neighbours()
            .add(index, n.ip)
            .link_layer_address(&n.mac)
            .state(NeighbourState::from(n.state))
            .flags(NeighbourFlags::from_bits_retain(n.flags))
            .replace()
            .execute()
            .await
            .map_err(nl_err(format!("adding neighbour {} on {}", n.ip, n.device)))?;
    }
    tracing::info!(neighbours = parsed.len(), "neighbours configured");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::types::IPAddress;

    fn neighbour(ip: &str, mac: &str, state: i32) -> ARPNeighbor {
        ARPNeighbor {
            toIPAddress: Some(IPAddress {
                address: ip.into(),
                ..Default::default()
            })
            .into(),
            device: "eth0".into(),
            lladdr: mac.into(),
            state,
            ..Default::default()
        }
    }

    #[test]
    fn neighbours_are_checked() {
        let n = parse_neighbour(&neighbour("10.88.0.1", "ee:ee:ee:ee:ee:ee", 0)).expect("valid");
        assert_eq!(n.state, NUD_PERMANENT, "no state: permanent");
        assert_eq!(n.mac, vec![0xee; 6]);
        let v6 = parse_neighbour(&neighbour("fd00::1", "ee:ee:ee:ee:ee:01", 0x80)).expect("v6");
        assert!(v6.ip.is_ipv6());
        for bad in [
            neighbour("10.88.0.300", "ee:ee:ee:ee:ee:ee", 0),
            neighbour("10.88.0.1", "ee:ee", 0),
            neighbour("10.88.0.1", "ee:ee:ee:ee:ee:ee", 1 << 20),
            ARPNeighbor {
                device: "eth0".into(),
                ..Default::default()
            },
            ARPNeighbor {
                device: String::new(),
                ..neighbour("10.88.0.1", "ee:ee:ee:ee:ee:ee", 0)
            },
        ] {
            assert!(
                matches!(parse_neighbour(&bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }
}
