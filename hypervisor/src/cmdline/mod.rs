//! The QEMU command line, built from typed pieces: one module per device family.
//! [`CommandLine::args`] is the only place that turns them into strings.

pub mod boot;
pub mod console;
pub mod fs;
pub mod machine;
pub mod vsock;

use crate::accel::ResolvedAccel;
use crate::VmConfig;

/// QMP socket name in the run directory.
pub const QMP_SOCKET: &str = "qmp.sock";
/// virtio-fs tag the guest mounts.
pub const SHARED_FS_TAG: &str = "kataShared";

/// One piece of the command line.
pub trait QemuArgs {
    fn append_to(&self, args: &mut Vec<String>);
}

/// Escapes a value inside QEMU's `key=value,...` option syntax (`,` → `,,`).
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// How virtio devices attach: PCI on q35, virtio-mmio on microvm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Pci,
    Mmio,
}

impl Transport {
    /// The QEMU device name for a virtio device family (`vhost-user-fs` → `vhost-user-fs-pci`).
    pub fn device(self, family: &str) -> String {
        match self {
            Transport::Pci => format!("{family}-pci"),
            Transport::Mmio => format!("{family}-device"),
        }
    }
}

/// The whole QEMU invocation (arguments after the binary).
#[derive(Debug, Clone)]
pub struct CommandLine {
    /// Shown by QEMU as the VM name: `sandbox-<id>`.
    pub name: String,
    pub machine: machine::Machine,
    pub accel: machine::AccelArg,
    pub cpu: machine::Cpu,
    pub smp: machine::Smp,
    pub memory: machine::Memory,
    pub boot: boot::DirectKernel,
    pub console: console::SerialConsole,
    pub qmp: console::QmpSocket,
    pub vsock: vsock::VsockDevice,
    pub fs: fs::VirtioFs,
}

impl CommandLine {
    /// The command line for a validated config.
    pub fn for_config(
        config: &VmConfig,
        accel: ResolvedAccel,
        vsock_dev: vsock::VsockDevice,
    ) -> CommandLine {
        let transport = machine::Machine::transport_of(config.machine);
        CommandLine {
            name: format!("sandbox-{}", config.id),
            machine: machine::Machine {
                kind: config.machine,
                memory_backend: "mem".into(),
            },
            accel: machine::AccelArg(accel),
            cpu: machine::Cpu(accel),
            smp: machine::Smp { cpus: config.vcpus },
            memory: machine::Memory {
                id: "mem".into(),
                size_mib: config.memory_mib,
            },
            boot: boot::DirectKernel {
                kernel: config.kernel.clone(),
                initrd: config.initrd.clone(),
                extra_params: config.kernel_params.clone(),
            },
            console: console::SerialConsole,
            qmp: console::QmpSocket {
                path: config.run_dir.join(QMP_SOCKET),
            },
            vsock: vsock_dev.with_transport(transport),
            fs: fs::VirtioFs {
                socket: config.run_dir.join(crate::helpers::VIRTIOFSD_SOCKET),
                tag: SHARED_FS_TAG.into(),
                transport,
            },
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["-name".to_string(), escape(&self.name)];
        let parts: [&dyn QemuArgs; 10] = [
            &self.machine,
            &self.accel,
            &self.memory,
            &self.smp,
            &self.cpu,
            &self.boot,
            &self.console,
            &self.qmp,
            &self.vsock,
            &self.fs,
        ];
        for part in parts {
            part.append_to(&mut args);
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::accel::ResolvedAccel;
    use crate::MachineType;

    fn cmdline(kind: MachineType, accel: ResolvedAccel, vsock: vsock::VsockDevice) -> CommandLine {
        let transport = machine::Machine::transport_of(kind);
        CommandLine {
            name: "sandbox-sb1".into(),
            machine: machine::Machine {
                kind,
                memory_backend: "mem".into(),
            },
            accel: machine::AccelArg(accel),
            cpu: machine::Cpu(accel),
            smp: machine::Smp { cpus: 2 },
            memory: machine::Memory {
                id: "mem".into(),
                size_mib: 512,
            },
            boot: boot::DirectKernel {
                kernel: PathBuf::from("/k/vmlinux"),
                initrd: PathBuf::from("/k/initrd.img"),
                extra_params: "quiet agent.log=debug".into(),
            },
            console: console::SerialConsole,
            qmp: console::QmpSocket {
                path: PathBuf::from("/run/x/qmp.sock"),
            },
            vsock: vsock.with_transport(transport),
            fs: fs::VirtioFs {
                socket: PathBuf::from("/run/x/virtiofsd.sock"),
                tag: "kataShared".into(),
                transport,
            },
        }
    }

    fn joined(c: &CommandLine) -> String {
        c.args().join(" ")
    }

    #[test]
    #[rustfmt::skip]
    fn q35_tcg_vhost_user() {
        let c = cmdline(
            MachineType::Q35,
            ResolvedAccel::Tcg,
            vsock::VsockDevice::VhostUser {
                socket: PathBuf::from("/run/x/vhost-vsock.sock"),
                transport: Transport::Pci,
            },
        );
        let a = c.args();
        let expected: Vec<&str> = vec![
            "-name", "sandbox-sb1",
            "-machine", "q35,memory-backend=mem",
            "-accel", "tcg,thread=multi",
            "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
            "-m", "512M",
            "-smp", "2",
            "-cpu", "max",
            "-kernel", "/k/vmlinux",
            "-initrd", "/k/initrd.img",
            "-append", "console=ttyS0 panic=-1 reboot=k quiet agent.log=debug",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-qmp", "unix:/run/x/qmp.sock,server=on,wait=off",
            "-chardev", "socket,id=vsock,path=/run/x/vhost-vsock.sock",
            "-device", "vhost-user-vsock-pci,chardev=vsock",
            "-chardev", "socket,id=fs,path=/run/x/virtiofsd.sock",
            "-device", "vhost-user-fs-pci,chardev=fs,tag=kataShared",
        ];
        assert_eq!(a, expected);
    }

    #[test]
    fn q35_kvm_kernel_vsock() {
        let c = cmdline(
            MachineType::Q35,
            ResolvedAccel::Kvm,
            vsock::VsockDevice::Vhost {
                cid: 7,
                transport: Transport::Pci,
            },
        );
        let s = joined(&c);
        assert!(s.contains("-accel kvm -object"), "{s}");
        assert!(s.contains("-cpu host"), "{s}");
        assert!(s.contains("-device vhost-vsock-pci,guest-cid=7"), "{s}");
        assert!(!s.contains("vhost-user-vsock"), "{s}");
    }

    #[test]
    fn microvm_uses_mmio_devices() {
        let c = cmdline(
            MachineType::Microvm,
            ResolvedAccel::Tcg,
            vsock::VsockDevice::VhostUser {
                socket: PathBuf::from("/run/x/vhost-vsock.sock"),
                transport: Transport::Pci,
            },
        );
        let s = joined(&c);
        assert!(s.contains("-machine microvm,"), "{s}");
        assert!(s.contains("memory-backend=mem"), "{s}");
        assert!(
            s.contains("-device vhost-user-vsock-device,chardev=vsock"),
            "{s}"
        );
        assert!(
            s.contains("-device vhost-user-fs-device,chardev=fs,tag=kataShared"),
            "{s}"
        );
        assert!(!s.contains("-pci"), "{s}");
    }

    #[test]
    fn command_line_from_config() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut c = crate::config::tests::valid_config(d.path());
        c.run_dir = PathBuf::from("/run/vc/sb1");
        c.vcpus = 2;
        let dev = vsock::VsockDevice::VhostUser {
            socket: c.run_dir.join(crate::helpers::VHOST_USER_VSOCK_SOCKET),
            transport: crate::cmdline::Transport::Pci,
        };
        let s = CommandLine::for_config(&c, ResolvedAccel::Tcg, dev)
            .args()
            .join(" ");
        assert!(
            s.starts_with(
                "-name sandbox-sb1 -machine q35,memory-backend=mem -accel tcg,thread=multi"
            ),
            "{s}"
        );
        assert!(
            s.contains("-qmp unix:/run/vc/sb1/qmp.sock,server=on,wait=off"),
            "{s}"
        );
        assert!(
            s.contains("-append console=ttyS0 panic=-1 reboot=k quiet"),
            "{s}"
        );
        assert!(s.contains("-smp 2"), "{s}");
        assert!(s.contains("path=/run/vc/sb1/virtiofsd.sock"), "{s}");
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut c = cmdline(
            MachineType::Q35,
            ResolvedAccel::Tcg,
            vsock::VsockDevice::Vhost {
                cid: 3,
                transport: Transport::Pci,
            },
        );
        c.fs.socket = PathBuf::from("/run/a,b/virtiofsd.sock");
        assert!(joined(&c).contains("path=/run/a,,b/virtiofsd.sock"));
    }
}
