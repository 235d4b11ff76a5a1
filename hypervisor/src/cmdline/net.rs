//! Pod networking: virtio-net NICs backed by tap devices that the shim
//! created in the pod's network namespace (see the shim's `network/`), and
//! on q35 empty PCIe root ports that NICs found later are hot-plugged into.
//! QEMU opens taps by name, so it runs in that namespace.

use super::{escape, QemuArgs, Transport};

/// How many NICs a q35 VM can take after boot (one root port each).
pub const NIC_HOTPLUG_PORTS: u32 = 4;

/// The id of the `n`th NIC-hotplug root port.
pub fn hotplug_port_id(n: u32) -> String {
    format!("nic-port{n}")
}

#[derive(Debug, Clone)]
pub struct TapNic {
    /// Index among the NICs: the netdev is `net<index>`, the device `nic<index>`.
    pub index: u32,
    /// Tap device name in the pod netns, e.g. `tap0_kata`.
    pub ifname: String,
    /// The guest NIC's MAC: the pod veth's, so the pod IP moves into the VM.
    pub mac: String,
    pub transport: Transport,
}

impl TapNic {
    /// The tap netdev's options (also what QMP `netdev_add` gets at hotplug).
    pub fn netdev_id(index: u32) -> String {
        format!("net{index}")
    }

    pub fn device_id(index: u32) -> String {
        format!("nic{index}")
    }
}

impl QemuArgs for TapNic {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-netdev".into());
        args.push(format!(
            "tap,id={},ifname={},script=no,downscript=no,vhost=off",
            Self::netdev_id(self.index),
            escape(&self.ifname)
        ));
        args.push("-device".into());
        args.push(format!(
            "{},id={},netdev={},mac={}",
            self.transport.device("virtio-net"),
            Self::device_id(self.index),
            Self::netdev_id(self.index),
            escape(&self.mac)
        ));
    }
}

/// Empty PCIe root ports (q35) for NICs hot-plugged after boot.
///
/// `power_controller_present=off`: the guest kernel has no PCIe hotplug
/// driver (pciehp) to switch a slot's power on, so a device plugged into a
/// slot with a power controller would stay powered off and invisible; without
/// one it is visible at once and the guest agent finds it with a PCI bus
/// rescan. The 2 MiB memory windows are reserved by the firmware at boot
/// (no I/O window: virtio 1.0 NICs need none), as the kernel cannot grow a
/// bridge window later.
#[derive(Debug, Clone)]
pub struct HotplugPorts {
    pub count: u32,
}

impl QemuArgs for HotplugPorts {
    fn append_to(&self, args: &mut Vec<String>) {
        if self.count == 0 {
            return;
        }
        // ACPI hotplug of bridges (the q35 default since QEMU 6.1) would
        // take the ports over from native PCIe hotplug; the guest has no
        // ACPI PCI hotplug driver either, and native mode is what the
        // power-controller setting above relies on.
        args.push("-global".into());
        args.push("ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off".into());
        for n in 0..self.count {
            args.push("-device".into());
            args.push(format!(
                "pcie-root-port,id={},bus=pcie.0,chassis={},power_controller_present=off,\
                 io-reserve=0,mem-reserve=2M,pref64-reserve=2M",
                hotplug_port_id(n),
                n + 1
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_and_virtio_net() {
        let mut args = Vec::new();
        TapNic {
            index: 1,
            ifname: "tap1_kata".into(),
            mac: "ca:fe:00:00:00:01".into(),
            transport: Transport::Pci,
        }
        .append_to(&mut args);
        assert_eq!(
            args,
            [
                "-netdev",
                "tap,id=net1,ifname=tap1_kata,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-pci,id=nic1,netdev=net1,mac=ca:fe:00:00:00:01"
            ]
        );
    }

    #[test]
    fn hotplug_ports_are_powered_without_a_controller() {
        let mut args = Vec::new();
        HotplugPorts { count: 0 }.append_to(&mut args);
        assert!(args.is_empty());
        HotplugPorts { count: 2 }.append_to(&mut args);
        assert_eq!(args.len(), 6, "{args:?}");
        assert_eq!(args[1], "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off");
        assert!(args[3].starts_with("pcie-root-port,id=nic-port0,bus=pcie.0,chassis=1,"));
        assert!(args[5].contains("id=nic-port1,") && args[5].contains("chassis=2,"));
        assert!(args[5].contains("power_controller_present=off"));
    }
}
