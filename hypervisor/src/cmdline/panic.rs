//! Guest panics reported to the host: a pvpanic device and what QEMU does
//! when it fires.
//!
//! The guest kernel runs with `panic=-1` (reboot at once) and QEMU with
//! `-no-reboot`, so without this a guest panic is only a QEMU exit with status
//! 0 and a `SHUTDOWN` the guest asked for: indistinguishable from a power-off.
//! With the device, the guest's panic notifier writes to it before rebooting
//! and QEMU emits `GUEST_PANICKED`, stops the vCPUs (the reboot never runs)
//! and, with `panic=exit-failure`, exits with status 1 after a `SHUTDOWN`
//! whose reason is `guest-panic`.
//!
//! The ISA `pvpanic` (I/O port 0x505) is used on both boards: QEMU describes
//! it in ACPI as `QEMU0001`, which the guest's `pvpanic-mmio` driver binds;
//! microvm has an ISA bus too (its serial, PIT, PIC and RTC sit on it), and
//! the PCI variant would cost q35 a slot and microvm has no PCI at all.

use super::QemuArgs;

#[derive(Debug, Clone, Copy, Default)]
pub struct PanicDevice;

impl QemuArgs for PanicDevice {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-device".into());
        args.push("pvpanic,id=pvpanic0".into());
        // Not `pause`: a paused, panicked VM would sit there holding its memory
        // until someone noticed; exiting lets the owner's wait_exit see it.
        args.push("-action".into());
        args.push("panic=exit-failure".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isa_pvpanic_and_qemu_exits_with_failure() {
        let mut args = Vec::new();
        PanicDevice.append_to(&mut args);
        assert_eq!(
            args,
            [
                "-device",
                "pvpanic,id=pvpanic0",
                "-action",
                "panic=exit-failure"
            ]
        );
    }
}
