//! A virtio-balloon device used only for free page reporting: the guest
//! tells QEMU which of its pages are free (in 2 MiB or larger runs) and
//! QEMU gives them back to the host. Without it every page the guest ever
//! touched (the initramfs it unpacked and freed, boot-time allocations)
//! stays resident in the host for the VM's whole life.

use super::{QemuArgs, Transport};

#[derive(Debug, Clone)]
pub struct FreePageReporting {
    pub transport: Transport,
}

impl QemuArgs for FreePageReporting {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-device".into());
        args.push(format!(
            "{},id=balloon0,free-page-reporting=on",
            self.transport.device("virtio-balloon")
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balloon_reports_free_pages() {
        let mut args = Vec::new();
        FreePageReporting {
            transport: Transport::Pci,
        }
        .append_to(&mut args);
        assert_eq!(
            args,
            [
                "-device",
                "virtio-balloon-pci,id=balloon0,free-page-reporting=on"
            ]
        );
    }
}
