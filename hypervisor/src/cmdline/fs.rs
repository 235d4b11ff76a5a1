//! Shared file system: vhost-user-fs backed by `virtiofsd`, or virtio-9p
//! served by QEMU itself (no daemon).

use std::path::PathBuf;

use super::{escape, QemuArgs, Transport};

#[derive(Debug, Clone)]
pub enum SharedFs {
    VirtioFs {
        /// virtiofsd's vhost-user socket.
        socket: PathBuf,
        /// Mount tag seen by the guest (`kataShared`).
        tag: String,
        transport: Transport,
    },
    Virtio9p {
        /// The host directory QEMU exports.
        path: PathBuf,
        tag: String,
        transport: Transport,
    },
}

impl QemuArgs for SharedFs {
    fn append_to(&self, args: &mut Vec<String>) {
        match self {
            SharedFs::VirtioFs {
                socket,
                tag,
                transport,
            } => {
                args.push("-chardev".into());
                args.push(format!(
                    "socket,id=fs,path={}",
                    escape(&socket.to_string_lossy())
                ));
                args.push("-device".into());
                args.push(format!(
                    "{},chardev=fs,tag={}",
                    transport.device("vhost-user-fs"),
                    escape(tag)
                ));
            }
            SharedFs::Virtio9p {
                path,
                tag,
                transport,
            } => {
                // security_model=none: files keep the host's owners (QEMU runs as
                // root); multidevs=remap: inode numbers stay unique across mounts.
                args.push("-fsdev".into());
                args.push(format!(
                    "local,id=fs,path={},security_model=none,multidevs=remap",
                    escape(&path.to_string_lossy())
                ));
                args.push("-device".into());
                args.push(format!(
                    "{},fsdev=fs,mount_tag={}",
                    transport.device("virtio-9p"),
                    escape(tag)
                ));
            }
        }
    }
}
