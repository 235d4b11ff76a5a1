//! Direct kernel boot: kernel, initramfs, command line.

use std::path::PathBuf;

use super::QemuArgs;

/// Parameters every guest gets: console on the first serial port, reboot
/// (= QEMU exit, with `-no-reboot`) right after a panic, and hot-plugged
/// memory online as soon as the kernel adds it (the agent's `OnlineCPUMem`
/// onlines only the blocks already there, which raced with the guest's ACPI
/// handling: a DIMM stayed offline).
///
/// `quiet` (console loglevel 4): every byte on the emulated UART costs the
/// guest's only vCPU an exit to QEMU, and under TCG the ~40 KiB of boot
/// messages cost a few hundred ms of pod start. Warnings, errors and panics
/// still reach the console tail, as do the agent's own lines (written to
/// /dev/console, not through printk); `loglevel=7` in `kernel_params`
/// brings the rest back for debugging.
///
/// `no_timer_check` (as upstream Kata's guests): the kernel's check that
/// the IO-APIC timer ticks is a timed busy loop; on a host busy with many
/// TCG guests it misses the ticks and panics ("IO-APIC + timer doesn't
/// work", 2 of 20 pods started at once). QEMU's timer does work.
pub const DEFAULT_KERNEL_PARAMS: &str =
    "console=ttyS0 panic=-1 reboot=k memhp_default_state=online quiet no_timer_check";

#[derive(Debug, Clone)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// What the machine needs (e.g. the TSC frequency for microvm under TCG),
    /// after [`DEFAULT_KERNEL_PARAMS`].
    pub machine_params: String,
    /// Appended last (configuration, agent parameters).
    pub extra_params: String,
}

impl DirectKernel {
    pub fn cmdline(&self) -> String {
        let mut line = DEFAULT_KERNEL_PARAMS.to_string();
        for part in [&self.machine_params, &self.extra_params] {
            let part = part.trim();
            if !part.is_empty() {
                line.push(' ');
                line.push_str(part);
            }
        }
        line
    }
}

/// Kernel parameters microvm needs under TCG: it has no HPET, no ACPI PM
/// timer and no port 0x61, so the guest cannot calibrate its TSC, marks it
/// unstable and hangs (seen: 2 of 5 boots, then every boot). Give the TSC
/// frequency (under TCG the guest's TSC is the host's) and trust it.
pub fn microvm_tcg_params(host_tsc_khz: Option<u64>) -> String {
    match host_tsc_khz {
        Some(khz) if khz > 0 => format!("tsc_early_khz={khz} tsc=reliable"),
        _ => "tsc=reliable".to_string(),
    }
}

/// The host's TSC frequency in kHz from `/proc/cpuinfo` text (first `cpu MHz`).
pub fn tsc_khz_from_cpuinfo(cpuinfo: &str) -> Option<u64> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("cpu MHz"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|mhz| *mhz > 0.0)
        .map(|mhz| (mhz * 1000.0).round() as u64)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_frequency_for_microvm() {
        let info = "processor\t: 0\nmodel name\t: X\ncpu MHz\t\t: 2596.142\ncache size\t: 1 KB\n";
        assert_eq!(tsc_khz_from_cpuinfo(info), Some(2_596_142));
        assert_eq!(tsc_khz_from_cpuinfo("nothing"), None);
        assert_eq!(
            microvm_tcg_params(Some(2_596_142)),
            "tsc_early_khz=2596142 tsc=reliable"
        );
        assert_eq!(microvm_tcg_params(None), "tsc=reliable");
        let k = DirectKernel {
            kernel: PathBuf::from("/k"),
            initrd: PathBuf::from("/i"),
            machine_params: " tsc=reliable ".into(),
            extra_params: "agent.log=debug".into(),
        };
        assert_eq!(
            k.cmdline(),
            "console=ttyS0 panic=-1 reboot=k memhp_default_state=online quiet no_timer_check tsc=reliable agent.log=debug"
        );
    }
}
