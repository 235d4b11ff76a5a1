//! The agent's vsock: kernel vhost-vsock with a guest CID, or vhost-user-vsock
//! backed by `vhost-device-vsock` (hybrid vsock on the host).

use std::path::PathBuf;

use super::{escape, QemuArgs, Transport};

#[derive(Debug, Clone)]
pub enum VsockDevice {
    Vhost {
        cid: u32,
        transport: Transport,
    },
    VhostUser {
        socket: PathBuf,
        transport: Transport,
    },
}

/// QOM id of the vhost-user-vsock device.
pub const VHOST_USER_VSOCK_ID: &str = "vsock0";

impl VsockDevice {
    /// The same device on another transport.
    pub fn with_transport(self, transport: Transport) -> Self {
        match self {
            VsockDevice::Vhost { cid, .. } => VsockDevice::Vhost { cid, transport },
            VsockDevice::VhostUser { socket, .. } => VsockDevice::VhostUser { socket, transport },
        }
    }
}

impl QemuArgs for VsockDevice {
    fn append_to(&self, args: &mut Vec<String>) {
        match self {
            VsockDevice::Vhost { cid, transport } => {
                args.push("-device".into());
                args.push(format!(
                    "{},guest-cid={cid}",
                    transport.device("vhost-vsock")
                ));
            }
            VsockDevice::VhostUser { socket, transport } => {
                args.push("-chardev".into());
                args.push(format!(
                    "socket,id=vsock,path={}",
                    escape(&socket.to_string_lossy())
                ));
                args.push("-device".into());
                // The id names the device for QMP (`vhost-started`, see qemu.rs).
                args.push(format!(
                    "{},chardev=vsock,id={VHOST_USER_VSOCK_ID}",
                    transport.device("vhost-user-vsock")
                ));
            }
        }
    }
}
