//! Taps in the pod's netns, one per interface, each joined to its
//! interface by tc `mirred` redirects (upstream kata's "tcfilter" model):
//! every frame the interface receives leaves through the tap into the
//! guest's NIC, and the other way round. The guest NIC has the interface's
//! MAC and addresses; the host side keeps only the redirect.

use std::path::Path;

use async_trait::async_trait;

use super::{in_netns, Result};

/// How taps are made and removed: iproute2 in the netns ([`Iproute2`]),
/// or a recording fake in tests.
#[async_trait]
pub trait TapOps: Send + Sync + std::fmt::Debug {
    async fn attach(&self, netns: &Path, tap: &str, iface: &str, mtu: u32) -> Result<()>;
    async fn detach(&self, netns: &Path, tap: &str, iface: &str) -> Result<()>;
}

/// The real taps: [`attach`] and [`detach`].
#[derive(Debug, Default)]
pub struct Iproute2;

#[async_trait]
impl TapOps for Iproute2 {
    async fn attach(&self, netns: &Path, tap: &str, iface: &str, mtu: u32) -> Result<()> {
        attach(netns, tap, iface, mtu).await
    }

    async fn detach(&self, netns: &Path, tap: &str, iface: &str) -> Result<()> {
        detach(netns, tap, iface).await
    }
}

/// The name of the `n`th tap the shim creates in a pod's netns.
pub fn tap_name(n: u32) -> String {
    format!("tap{n}_kata")
}

/// Whether `name` is one of ours (`tap<N>_kata`): never attached as a pod
/// interface itself.
pub fn is_our_tap(name: &str) -> bool {
    name.strip_prefix("tap")
        .and_then(|r| r.strip_suffix("_kata"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Creates `tap` in `netns` with `iface`'s MTU and redirects all traffic
/// between `iface` and it (both directions, tc ingress + mirred). A tap
/// left by an earlier try is reused. On failure the tap is removed again and
/// `iface`'s ingress qdisc (holding only our redirect) with it.
pub async fn attach(netns: &Path, tap: &str, iface: &str, mtu: u32) -> Result<()> {
    let r = attach_inner(netns, tap, iface, mtu).await;
    if r.is_err() {
        let _ = detach(netns, tap, iface).await;
    }
    r
}

async fn attach_inner(netns: &Path, tap: &str, iface: &str, mtu: u32) -> Result<()> {
    let mtu = mtu.to_string();
    if in_netns(netns, &["ip", "link", "show", "dev", tap])
        .await
        .is_err()
    {
        in_netns(netns, &["ip", "tuntap", "add", "dev", tap, "mode", "tap"]).await?;
    }
    in_netns(netns, &["ip", "link", "set", "dev", tap, "mtu", &mtu, "up"]).await?;
    for (from, to) in [(iface, tap), (tap, iface)] {
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

/// Removes `tap` (and with it the redirect filters pointing at it) and
/// `iface`'s ingress qdisc. The netns may be gone already (CNI teardown).
pub async fn detach(netns: &Path, tap: &str, iface: &str) -> Result<()> {
    let _ = in_netns(netns, &["tc", "qdisc", "del", "dev", iface, "ingress"]).await;
    in_netns(netns, &["ip", "link", "del", "dev", tap])
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_taps_are_recognised() {
        assert_eq!(tap_name(3), "tap3_kata");
        for ours in ["tap0_kata", "tap12_kata"] {
            assert!(is_our_tap(ours), "{ours}");
        }
        for theirs in ["tap_kata", "tapx_kata", "eth0", "tap0", "tap0_kata0"] {
            assert!(!is_our_tap(theirs), "{theirs}");
        }
    }
}
