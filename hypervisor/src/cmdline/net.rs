//! Pod networking: a virtio-net NIC backed by a tap device that the shim
//! created in the pod's network namespace (see the shim's `network.rs`).
//! QEMU opens the tap by name, so it must run in that namespace (or be given
//! an already opened tap fd with `fd=`).

use super::{escape, QemuArgs, Transport};

#[derive(Debug, Clone)]
pub struct TapNic {
    /// Tap device name in the pod netns, e.g. `tap0_kata`.
    pub ifname: String,
    /// The guest NIC's MAC: the pod veth's, so the pod IP moves into the VM.
    pub mac: String,
    pub transport: Transport,
}

impl QemuArgs for TapNic {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-netdev".into());
        args.push(format!(
            "tap,id=net0,ifname={},script=no,downscript=no,vhost=off",
            escape(&self.ifname)
        ));
        args.push("-device".into());
        args.push(format!(
            "{},netdev=net0,mac={}",
            self.transport.device("virtio-net"),
            escape(&self.mac)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_and_virtio_net() {
        let mut args = Vec::new();
        TapNic {
            ifname: "tap0_kata".into(),
            mac: "ca:fe:00:00:00:01".into(),
            transport: Transport::Pci,
        }
        .append_to(&mut args);
        assert_eq!(
            args,
            [
                "-netdev",
                "tap,id=net0,ifname=tap0_kata,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-pci,netdev=net0,mac=ca:fe:00:00:00:01"
            ]
        );
    }
}
