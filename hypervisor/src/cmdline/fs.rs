//! Shared file system: vhost-user-fs backed by `virtiofsd`.

use std::path::PathBuf;

use super::{escape, QemuArgs, Transport};

#[derive(Debug, Clone)]
pub struct VirtioFs {
    /// virtiofsd's vhost-user socket.
    pub socket: PathBuf,
    /// Mount tag seen by the guest (`kataShared`).
    pub tag: String,
    pub transport: Transport,
}

impl QemuArgs for VirtioFs {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id=fs,path={}",
            escape(&self.socket.to_string_lossy())
        ));
        args.push("-device".into());
        args.push(format!(
            "{},chardev=fs,tag={}",
            self.transport.device("vhost-user-fs"),
            escape(&self.tag)
        ));
    }
}
