//! Machine type, accelerator, CPU model and count, guest memory.

use super::{QemuArgs, Transport};
use crate::accel::ResolvedAccel;
use crate::MachineType;

/// `-machine`: the board, with RAM from a named memory backend.
#[derive(Debug, Clone)]
pub struct Machine {
    pub kind: MachineType,
    /// Id of the [`Memory`] backend object.
    pub memory_backend: String,
}

impl Machine {
    /// Virtio transport the board offers.
    pub fn transport_of(kind: MachineType) -> Transport {
        match kind {
            MachineType::Q35 => Transport::Pci,
            MachineType::Microvm => Transport::Mmio,
        }
    }
}

impl QemuArgs for Machine {
    fn append_to(&self, args: &mut Vec<String>) {
        let board = match self.kind {
            MachineType::Q35 => "q35".to_string(),
            // Legacy serial for the console, no option ROMs, PCIe off: devices are
            // virtio-mmio (found through ACPI; the guest needs the virtio_mmio driver).
            // PIT/PIC/RTC on: without them a TCG guest can hang calibrating its TSC.
            MachineType::Microvm => {
                "microvm,isa-serial=on,x-option-roms=off,pcie=off,pit=on,pic=on,rtc=on".to_string()
            }
        };
        args.push("-machine".into());
        args.push(format!(
            "{board},memory-backend={}",
            super::escape(&self.memory_backend)
        ));
    }
}

/// `-accel`.
#[derive(Debug, Clone, Copy)]
pub struct AccelArg(pub ResolvedAccel);

impl QemuArgs for AccelArg {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-accel".into());
        args.push(
            match self.0 {
                ResolvedAccel::Kvm => "kvm",
                // tb-size caps TCG's translation cache (MiB): left alone it grew to
                // 60 MiB per VM; 32 kept boot time within noise (make bench).
                // 16 (tried with the project kernel): -17 MiB per pod, but pod
                // start +130 ms and exec 57 -> 200 ms (translations thrash).
                ResolvedAccel::Tcg => "tcg,thread=multi,tb-size=32",
            }
            .into(),
        );
    }
}

/// The CPU under TCG: everything TCG can emulate, but without ERMS. With
/// ERMS the guest kernel copies and clears memory with `rep movsb`/`rep
/// stosb` (copy_user, clear_page, memset), which QEMU 7.2's TCG runs one
/// byte per loop turn; without it, `rep movsq`/`stosq`, eight bytes a turn.
/// Measured here: boot 852 -> 805 ms, 256 MiB of container stdout 6.6 ->
/// 4.0 s through `ctr run`.
pub const TCG_CPU: &str = "max,erms=off";

/// `-cpu`: the host's model under KVM, [`TCG_CPU`] otherwise, plus
/// configured features (`pmu=off`, `+x2apic`, `-vmx`, ...).
#[derive(Debug, Clone)]
pub struct Cpu {
    pub accel: ResolvedAccel,
    pub features: String,
}

impl QemuArgs for Cpu {
    fn append_to(&self, args: &mut Vec<String>) {
        let model = match self.accel {
            ResolvedAccel::Kvm => "host",
            ResolvedAccel::Tcg => TCG_CPU,
        };
        let features = self.features.trim().trim_matches(',');
        args.push("-cpu".into());
        args.push(if features.is_empty() {
            model.to_string()
        } else {
            format!("{model},{features}")
        });
    }
}

/// `-smp`: vCPUs at boot, and the most they may be hot-plugged to.
#[derive(Debug, Clone, Copy)]
pub struct Smp {
    pub cpus: u32,
    pub max_cpus: Option<u32>,
}

impl QemuArgs for Smp {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-smp".into());
        args.push(match self.max_cpus {
            Some(max) if max > self.cpus => format!("{},maxcpus={max}", self.cpus),
            _ => self.cpus.to_string(),
        });
    }
}

/// Guest RAM: a shared memfd backend (vhost-user daemons map guest memory) and
/// `-m`, with DIMM slots for hotplug when configured.
#[derive(Debug, Clone)]
pub struct Memory {
    pub id: String,
    pub size_mib: u32,
    pub hotplug: Option<crate::options::MemoryHotplug>,
}

impl QemuArgs for Memory {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-object".into());
        args.push(format!(
            "memory-backend-memfd,id={},size={}M,share=on",
            super::escape(&self.id),
            self.size_mib
        ));
        args.push("-m".into());
        args.push(match self.hotplug {
            Some(h) if h.slots > 0 && h.max_mib > self.size_mib => {
                format!("{}M,slots={},maxmem={}M", self.size_mib, h.slots, h.max_mib)
            }
            _ => format!("{}M", self.size_mib),
        });
    }
}
