//! Direct kernel boot: kernel, initramfs, command line.

use std::path::PathBuf;

use super::QemuArgs;

/// Parameters every guest gets: console on the first serial port, reboot
/// (= QEMU exit, with `-no-reboot`) right after a panic.
pub const DEFAULT_KERNEL_PARAMS: &str = "console=ttyS0 panic=-1 reboot=k";

#[derive(Debug, Clone)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Appended after [`DEFAULT_KERNEL_PARAMS`].
    pub extra_params: String,
}

impl DirectKernel {
    pub fn cmdline(&self) -> String {
        let extra = self.extra_params.trim();
        if extra.is_empty() {
            DEFAULT_KERNEL_PARAMS.to_string()
        } else {
            format!("{DEFAULT_KERNEL_PARAMS} {extra}")
        }
    }
}

impl QemuArgs for DirectKernel {
    fn append_to(&self, args: &mut Vec<String>) {
        // Plain file arguments: not parsed as QEMU options, so no escaping.
        args.push("-kernel".into());
        args.push(self.kernel.to_string_lossy().into_owned());
        args.push("-initrd".into());
        args.push(self.initrd.to_string_lossy().into_owned());
        args.push("-append".into());
        args.push(self.cmdline());
    }
}
