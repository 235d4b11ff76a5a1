//! One pod's network: which interfaces of its netns are attached to the VM
//! (through which tap), what the guest was told, and the sync that brings
//! both up to date with the netns (at boot, then at each container Start).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent_client::Agent;
use hypervisor::{NicConfig, Vm};

use super::scan::{Interface, Neighbour, PodNetwork};
use super::{guest, scan, tap};
use crate::error::{Error, Result};

/// An interface of the netns joined to a guest NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub name: String,
    pub mac: String,
    pub tap: String,
}

/// The pod's netns and what the shim made of it.
#[derive(Debug)]
pub struct PodNet {
    pub netns: PathBuf,
    taps: Arc<dyn tap::TapOps>,
    /// Every tap created, in order; each is removed at teardown.
    attached: Vec<Attached>,
    next_tap: u32,
    /// The interfaces as the guest was last told (UpdateInterface).
    sent_interfaces: Vec<Interface>,
    /// The routes the guest was last given (UpdateRoutes replaces them all).
    sent_routes: Option<Vec<protocols::types::Route>>,
    sent_neighbours: Vec<Neighbour>,
    /// MACs of interfaces the VM cannot take (no hotplug): logged once.
    refused: Vec<String>,
}

/// What a sync has to do: interfaces to attach (their MACs are not
/// attached, nor refused before).
pub fn new_interfaces<'a>(
    attached: &[Attached],
    refused: &[String],
    net: &'a PodNetwork,
) -> Vec<&'a Interface> {
    net.interfaces
        .iter()
        .filter(|i| !i.mac.is_empty())
        .filter(|i| !attached.iter().any(|a| a.mac == i.mac) && !refused.contains(&i.mac))
        .collect()
}

impl PodNet {
    /// Nothing attached yet; taps made with `taps`.
    pub fn new(netns: &Path, taps: Arc<dyn tap::TapOps>) -> Self {
        Self {
            netns: netns.to_path_buf(),
            taps,
            attached: Vec::new(),
            next_tap: 0,
            sent_interfaces: Vec::new(),
            sent_routes: None,
            sent_neighbours: Vec::new(),
            refused: Vec::new(),
        }
    }

    /// Before the VM boots: scans the netns and gives each interface a tap.
    /// On failure every tap made so far is removed.
    pub async fn prepare(netns: &Path) -> Result<(PodNet, PodNetwork)> {
        let net = scan::scan(netns).await?;
        let pod = PodNet::new(netns, Arc::new(tap::Iproute2));
        Ok((pod.with_boot_taps(&net).await?, net))
    }

    /// Gives each interface of `net` a tap (before the VM boots). On
    /// failure every tap made so far is removed.
    pub async fn with_boot_taps(mut self, net: &PodNetwork) -> Result<PodNet> {
        for iface in new_interfaces(&[], &[], net) {
            if let Err(e) = self.attach_tap(iface).await {
                self.teardown().await;
                return Err(e);
            }
        }
        Ok(self)
    }

    /// The NICs the VM boots with, one per tap, in order.
    pub fn nics(&self) -> Vec<NicConfig> {
        self.attached
            .iter()
            .map(|a| NicConfig {
                tap: a.tap.clone(),
                mac: a.mac.clone(),
            })
            .collect()
    }

    /// The taps and their interfaces (for the state file).
    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    async fn attach_tap(&mut self, iface: &Interface) -> Result<Attached> {
        let name = tap::tap_name(self.next_tap);
        // Spent even on failure: a half-made tap is removed by `attach`.
        self.next_tap += 1;
        self.taps
            .attach(&self.netns, &name, &iface.name, iface.mtu)
            .await?;
        let a = Attached {
            name: iface.name.clone(),
            mac: iface.mac.clone(),
            tap: name,
        };
        self.attached.push(a.clone());
        Ok(a)
    }

    /// Removes the record and the tap of `a` (a hotplug that failed).
    async fn drop_tap(&mut self, a: &Attached) {
        self.attached.retain(|x| x.tap != a.tap);
        if let Err(e) = self.taps.detach(&self.netns, &a.tap, &a.name).await {
            tracing::warn!(tap = %a.tap, "removing the tap of a failed hotplug: {e}");
        }
    }

    /// Reads the netns again and brings the VM and the guest up to date:
    /// new interfaces hot-plugged (with a tap each), then every change of
    /// addresses, MTU, routes and neighbours pushed. Returns whether taps
    /// were added (the caller records them).
    pub async fn sync(&mut self, vm: &dyn Vm, agent: &dyn Agent) -> Result<bool> {
        let net = scan::scan(&self.netns).await?;
        self.apply(&net, vm, agent).await
    }

    /// [`PodNet::sync`] for a netns read as `net`.
    pub async fn apply(
        &mut self,
        net: &PodNetwork,
        vm: &dyn Vm,
        agent: &dyn Agent,
    ) -> Result<bool> {
        let fresh: Vec<Interface> = new_interfaces(&self.attached, &self.refused, net)
            .into_iter()
            .cloned()
            .collect();
        let mut added = false;
        for iface in fresh {
            let a = self.attach_tap(&iface).await?;
            added = true;
            let nic = NicConfig {
                tap: a.tap.clone(),
                mac: a.mac.clone(),
            };
            match vm.hotplug_nic(&nic).await {
                Ok(()) => {
                    tracing::info!(netns = %self.netns.display(), iface = %a.name, tap = %a.tap, mac = %a.mac, "interface hot-plugged");
                }
                Err(hypervisor::Error::Unsupported(what)) => {
                    tracing::warn!(
                        netns = %self.netns.display(),
                        iface = %a.name,
                        "interface appeared after boot but {what} is not supported by this VM \
                         (use machine q35): left out"
                    );
                    self.drop_tap(&a).await;
                    self.refused.push(a.mac);
                }
                Err(e) => {
                    self.drop_tap(&a).await;
                    return Err(Error::from(e));
                }
            }
        }
        self.configure_guest(agent, net).await?;
        Ok(added)
    }

    /// Tells the guest what changed since it was last told: interfaces
    /// (UpdateInterface, by MAC), the route table, new neighbours. Only
    /// attached interfaces count.
    pub async fn configure_guest(&mut self, agent: &dyn Agent, net: &PodNetwork) -> Result<()> {
        for iface in &net.interfaces {
            if !self.attached.iter().any(|a| a.mac == iface.mac) {
                continue;
            }
            if self.sent_interfaces.contains(iface) {
                continue;
            }
            // Whatever the agent does to the link (a rename takes it down,
            // and the kernel then flushes its routes), the table is sent again.
            self.sent_routes = None;
            agent.update_interface(guest::interface(iface)).await?;
            self.sent_interfaces.retain(|s| s.mac != iface.mac);
            self.sent_interfaces.push(iface.clone());
            tracing::info!(iface = %iface.name, mac = %iface.mac, addresses = iface.addresses.len(), mtu = iface.mtu, "guest interface configured");
        }
        let devices: Vec<&str> = self
            .attached
            .iter()
            .filter_map(|a| {
                net.interfaces
                    .iter()
                    .find(|i| i.mac == a.mac)
                    .map(|i| i.name.as_str())
            })
            .collect();
        let routes = guest::routes(net, &devices);
        if self.sent_routes.as_ref() != Some(&routes) {
            agent.update_routes(routes.clone()).await?;
            tracing::info!(routes = routes.len(), "guest routes configured");
            self.sent_routes = Some(routes);
        }
        let fresh: Vec<Neighbour> = net
            .neighbours
            .iter()
            .filter(|n| !self.sent_neighbours.contains(n))
            .cloned()
            .collect();
        let wanted = guest::neighbours(&fresh, &devices);
        if !wanted.is_empty() {
            agent.add_arp_neighbors(wanted).await?;
            self.sent_neighbours.extend(
                fresh
                    .into_iter()
                    .filter(|n| devices.contains(&n.device.as_str())),
            );
        }
        Ok(())
    }

    /// Removes every tap (and redirect) the shim made. The netns may be
    /// gone already (CNI teardown), and the taps with it.
    pub async fn teardown(&mut self) {
        for a in std::mem::take(&mut self.attached) {
            if let Err(e) = self.taps.detach(&self.netns, &a.tap, &a.name).await {
                tracing::debug!(tap = %a.tap, "removing the tap: {e}");
            }
        }
    }
}

#[cfg(test)]
#[path = "pod_tests.rs"]
mod tests;
