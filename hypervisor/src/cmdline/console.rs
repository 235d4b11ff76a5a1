//! Console and control: serial port on QEMU's stdio, no default devices, QMP socket.

use std::path::PathBuf;

use super::{escape, QemuArgs};

/// No default devices or config files, no display; the guest's first serial
/// port is QEMU's stdout; a guest reboot makes QEMU exit.
#[derive(Debug, Clone, Copy)]
pub struct SerialConsole;

impl QemuArgs for SerialConsole {
    fn append_to(&self, args: &mut Vec<String>) {
        for a in [
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
        ] {
            args.push(a.into());
        }
    }
}

/// QMP server on a unix socket; QEMU does not wait for a client.
#[derive(Debug, Clone)]
pub struct QmpSocket {
    pub path: PathBuf,
}

impl QemuArgs for QmpSocket {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-qmp".into());
        args.push(format!(
            "unix:{},server=on,wait=off",
            escape(&self.path.to_string_lossy())
        ));
    }
}
