//! vCPU and memory hotplug over QMP (q35): vCPUs into free slots of
//! `query-hotpluggable-cpus` and back out, DIMMs backed by shared memfds.

use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast;

use super::{QemuVm, MEMORY_HOTPLUG_ALIGN_MIB};
use crate::cmdline::net::TapNic;
use crate::qmp::CpuSlot;
use crate::{Error, Result, Vm, VmEvent};

/// How long an unplug waits for the guest to release a vCPU.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a DIMM's insertion waits for the guest's ACPI answer.
const HOTPLUG_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// ACPI _OST source event: device insertion.
const OST_INSERT: u64 = 1;

impl QemuVm {
    pub(super) async fn hotplug_vcpus(&self, count: u32) -> Result<u32> {
        let Some(max) = self.options.max_vcpus else {
            return Err(Error::InvalidConfig(
                "vCPU hotplug: the VM was started without max_vcpus".into(),
            ));
        };
        if count == 0 || count > max {
            return Err(Error::InvalidConfig(format!(
                "vCPU hotplug: {count} is not between 1 and max_vcpus ({max})"
            )));
        }
        let slots = self
            .with_qmp(|q| Box::pin(q.query_hotpluggable_cpus()))
            .await?;
        let plugged = slots.iter().filter(|s| s.qom_path.is_some()).count() as u32;
        if count > plugged {
            let free = slots.iter().filter(|s| s.qom_path.is_none());
            for slot in free.take((count - plugged) as usize) {
                let id = vcpu_device_id(slot);
                let (driver, props) = (slot.driver.clone(), slot.props.clone());
                tracing::info!(sandbox = %self.id, %id, "hot-plugging a vCPU");
                self.with_qmp(move |q| {
                    Box::pin(async move { q.device_add(&driver, &id, props).await })
                })
                .await?;
            }
        } else if count < plugged {
            // Only hot-plugged vCPUs (ours have a device id) can go.
            let mut events = self.events.subscribe();
            let ours: Vec<String> = slots
                .iter()
                .filter(|s| {
                    s.qom_path
                        .as_deref()
                        .is_some_and(|p| p.starts_with("/machine/peripheral/"))
                })
                .map(vcpu_device_id)
                .rev()
                .take((plugged - count) as usize)
                .collect();
            for id in ours {
                tracing::info!(sandbox = %self.id, %id, "unplugging a vCPU");
                let del = id.clone();
                self.with_qmp(move |q| Box::pin(async move { q.device_del(&del).await }))
                    .await?;
                let deleted = tokio::time::timeout(UNPLUG_TIMEOUT, async {
                    loop {
                        match events.recv().await {
                            Ok(VmEvent::DeviceDeleted { id: d }) if d == id => return true,
                            Err(broadcast::error::RecvError::Closed) => return false,
                            _ => {}
                        }
                    }
                })
                .await;
                if !matches!(deleted, Ok(true)) {
                    tracing::warn!(sandbox = %self.id, %id, "guest did not release the vCPU");
                    break;
                }
            }
        }
        Ok(self.vcpus().await?.len() as u32)
    }

    pub(super) async fn hotplug_memory(&self, size_mib: u32) -> Result<()> {
        let Some(hotplug) = self.options.memory_hotplug else {
            return Err(Error::InvalidConfig(
                "memory hotplug: the VM was started without memory_hotplug".into(),
            ));
        };
        if size_mib == 0 || !size_mib.is_multiple_of(MEMORY_HOTPLUG_ALIGN_MIB) {
            return Err(Error::InvalidConfig(format!(
                "memory hotplug: {size_mib} MiB is not a multiple of {MEMORY_HOTPLUG_ALIGN_MIB} MiB"
            )));
        }
        let mut dimms = self.dimms.lock().await;
        if *dimms >= hotplug.slots {
            return Err(Error::InvalidConfig(format!(
                "memory hotplug: all {} slots are used",
                hotplug.slots
            )));
        }
        let (base, plugged) = self
            .with_qmp(|q| Box::pin(q.query_memory_size_summary()))
            .await?;
        let total_mib = ((base + plugged) >> 20) as u32 + size_mib;
        if total_mib > hotplug.max_mib {
            return Err(Error::InvalidConfig(format!(
                "memory hotplug: {total_mib} MiB would exceed max_mib ({})",
                hotplug.max_mib
            )));
        }
        let n = *dimms;
        let (mem, dimm) = (format!("dimm-mem{n}"), format!("dimm{n}"));
        tracing::info!(sandbox = %self.id, size_mib, %dimm, "hot-plugging memory");
        let bytes = u64::from(size_mib) << 20;
        // Shared like the boot RAM: vhost-user daemons map every guest page.
        let m = mem.clone();
        self.with_qmp(move |q| {
            Box::pin(async move {
                q.object_add(
                    "memory-backend-memfd",
                    &m,
                    json!({ "size": bytes, "share": true }),
                )
                .await
            })
        })
        .await?;
        // Subscribed before device_add: the guest may answer at once.
        let mut events = self.events.subscribe();
        let (m, d) = (mem.clone(), dimm.clone());
        let added = self
            .with_qmp(move |q| {
                Box::pin(async move { q.device_add("pc-dimm", &d, json!({ "memdev": m })).await })
            })
            .await;
        if let Err(e) = added {
            let m = mem.clone();
            let _ = self
                .with_qmp(move |q| Box::pin(async move { q.object_del(&m).await }))
                .await;
            return Err(e);
        }
        *dimms += 1;
        drop(dimms);
        self.wait_for_guest_ack(&mut events, &dimm).await
    }

    /// Waits until the guest's ACPI has handled the insertion of `device`
    /// (its `_OST`): the memory is then in the guest, and online
    /// (`memhp_default_state=online`). Without this, callers that read the
    /// guest's memory right after `device_add` raced its hotplug handler. A
    /// guest that stays silent is logged, not an error: the DIMM is plugged.
    async fn wait_for_guest_ack(
        &self,
        events: &mut broadcast::Receiver<VmEvent>,
        device: &str,
    ) -> Result<()> {
        let acked = tokio::time::timeout(HOTPLUG_ACK_TIMEOUT, async {
            loop {
                match events.recv().await {
                    Ok(VmEvent::AcpiOst {
                        device: d,
                        source: OST_INSERT,
                        status,
                    }) if d == device => return Some(status),
                    Err(broadcast::error::RecvError::Closed) => return None,
                    _ => {}
                }
            }
        })
        .await;
        match acked {
            Ok(Some(0)) => Ok(()),
            Ok(Some(status)) => Err(Error::HotplugRejected {
                device: device.to_string(),
                status,
            }),
            Ok(None) | Err(_) => {
                tracing::warn!(
                    sandbox = %self.id,
                    device,
                    "the guest did not acknowledge the hotplug within {HOTPLUG_ACK_TIMEOUT:?}"
                );
                Ok(())
            }
        }
    }
}

/// The `device_add` id of a hot-plugged vCPU slot.
fn vcpu_device_id(slot: &CpuSlot) -> String {
    let prop = |k: &str| {
        slot.props
            .get(k)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    format!(
        "cpu-{}-{}-{}",
        prop("socket-id"),
        prop("core-id"),
        prop("thread-id")
    )
}

/// The NICs of a VM: how many exist (ids `net<N>`/`nic<N>`) and which
/// hotplug root ports are taken.
#[derive(Debug)]
pub(super) struct NicSlots {
    pub machine: crate::MachineType,
    /// Index of the next NIC (boot NICs count too).
    pub next_index: u32,
    /// Root ports taken by hot-plugged NICs (`nic-port0`, ... in order).
    pub ports_used: u32,
    /// Root ports the VM was started with.
    pub ports: u32,
}

impl QemuVm {
    /// `netdev_add` (QEMU opens the tap by name: it runs in the pod's
    /// netns) + `device_add` of a virtio-net-pci into the next free root
    /// port. A failed `device_add` takes its netdev back out.
    pub(super) async fn hotplug_tap_nic(&self, nic: &crate::NicConfig) -> Result<()> {
        crate::config::validate_nic(nic)?;
        let mut slots = self.nics.lock().await;
        if slots.machine == crate::MachineType::Microvm {
            return Err(Error::Unsupported(
                "NIC hotplug on microvm (no PCI hotplug)",
            ));
        }
        if slots.ports_used >= slots.ports {
            return Err(Error::InvalidConfig(format!(
                "NIC hotplug: all {} hotplug ports are used (or the VM has no network namespace)",
                slots.ports
            )));
        }
        let index = slots.next_index;
        let port = crate::cmdline::net::hotplug_port_id(slots.ports_used);
        let netdev = TapNic::netdev_id(index);
        let device = TapNic::device_id(index);
        tracing::info!(sandbox = %self.id, %device, tap = %nic.tap, mac = %nic.mac, %port, "hot-plugging a NIC");
        let (id, tap) = (netdev.clone(), nic.tap.clone());
        self.with_qmp(move |q| Box::pin(async move { q.netdev_add_tap(&id, &tap).await }))
            .await?;
        // Either way the index is spent: QEMU may keep a half-made device.
        slots.next_index += 1;
        let props = json!({ "netdev": netdev, "mac": nic.mac, "bus": port });
        let d = device.clone();
        let added = self
            .with_qmp(move |q| {
                Box::pin(async move { q.device_add("virtio-net-pci", &d, props).await })
            })
            .await;
        if let Err(e) = added {
            let id = netdev.clone();
            let _ = self
                .with_qmp(move |q| Box::pin(async move { q.netdev_del(&id).await }))
                .await;
            return Err(e);
        }
        slots.ports_used += 1;
        Ok(())
    }
}
