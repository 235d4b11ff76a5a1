//! The QEMU command line, built from typed pieces: one module per device family.
//! [`CommandLine::args`] is the only place that turns them into strings.

pub mod balloon;
pub mod boot;
pub mod console;
pub mod fs;
pub mod machine;
pub mod net;
pub mod panic;
pub mod rng;
pub mod sandbox;
pub mod vsock;

use crate::accel::ResolvedAccel;
use crate::options::{SharedFsKind, VmOptions};
use crate::VmConfig;

/// QMP socket name in the run directory (commands).
pub const QMP_SOCKET: &str = "qmp.sock";
/// A second QMP monitor that only carries events to the event watcher.
pub const QMP_EVENTS_SOCKET: &str = "qmp-events.sock";
/// virtio-fs tag the guest mounts.
pub use protocols::share::SHARED_FS_TAG;

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
    pub sandbox: sandbox::Sandbox,
    pub console: console::SerialConsole,
    pub qmp: console::QmpSocket,
    /// The event-only monitor.
    pub qmp_events: console::QmpSocket,
    pub rng: Option<rng::Rng>,
    pub vsock: vsock::VsockDevice,
    pub fs: fs::SharedFs,
    /// The pod's NICs at boot.
    pub net: Vec<net::TapNic>,
    /// Root ports for NICs hot-plugged later (q35 with a pod netns).
    pub nic_ports: Option<net::HotplugPorts>,
    pub balloon: Option<balloon::FreePageReporting>,
    /// Guest panics reach the host as GUEST_PANICKED and end the VM.
    pub panic: Option<panic::PanicDevice>,
}

impl CommandLine {
    /// The command line for a validated config.
    pub fn for_config(
        config: &VmConfig,
        options: &VmOptions,
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
            cpu: machine::Cpu {
                accel,
                features: options.cpu_features.clone(),
            },
            smp: machine::Smp {
                cpus: config.vcpus,
                max_cpus: options.max_vcpus,
            },
            memory: machine::Memory {
                id: "mem".into(),
                size_mib: config.memory_mib,
                hotplug: options.memory_hotplug,
            },
            boot: boot::DirectKernel {
                kernel: config.kernel.clone(),
                initrd: config.initrd.clone(),
                machine_params: String::new(),
                extra_params: config.kernel_params.clone(),
            },
            sandbox: sandbox::Sandbox(options.seccomp),
            console: console::SerialConsole,
            qmp: console::QmpSocket {
                path: config.run_dir.join(QMP_SOCKET),
            },
            qmp_events: console::QmpSocket {
                path: config.run_dir.join(QMP_EVENTS_SOCKET),
            },
            rng: options.entropy_source.as_ref().map(|source| rng::Rng {
                source: source.clone(),
                transport,
            }),
            vsock: vsock_dev.with_transport(transport),
            balloon: Some(balloon::FreePageReporting { transport }),
            panic: Some(panic::PanicDevice),
            net: config
                .network
                .iter()
                .flat_map(|n| n.nics.iter())
                .zip(0..)
                .map(|(n, index)| net::TapNic {
                    index,
                    ifname: n.tap.clone(),
                    mac: n.mac.clone(),
                    transport,
                })
                .collect(),
            nic_ports: (config.network.is_some() && config.machine == crate::MachineType::Q35)
                .then_some(net::HotplugPorts {
                    count: net::NIC_HOTPLUG_PORTS,
                }),
            fs: match options.shared_fs {
                SharedFsKind::VirtioFs => fs::SharedFs::VirtioFs {
                    socket: config.run_dir.join(crate::helpers::VIRTIOFSD_SOCKET),
                    tag: SHARED_FS_TAG.into(),
                    transport,
                },
                SharedFsKind::Virtio9p => fs::SharedFs::Virtio9p {
                    path: config.shared_dir.clone(),
                    tag: SHARED_FS_TAG.into(),
                    transport,
                },
            },
        }
    }

    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["-name".to_string(), escape(&self.name)];
        let parts: [Option<&dyn QemuArgs>; 16] = [
            Some(&self.machine),
            Some(&self.accel),
            Some(&self.memory),
            Some(&self.smp),
            Some(&self.cpu),
            Some(&self.boot),
            Some(&self.sandbox),
            Some(&self.console),
            Some(&self.qmp),
            Some(&self.qmp_events),
            self.rng.as_ref().map(|r| r as &dyn QemuArgs),
            Some(&self.vsock),
            Some(&self.fs),
            self.nic_ports.as_ref().map(|p| p as &dyn QemuArgs),
            self.balloon.as_ref().map(|b| b as &dyn QemuArgs),
            self.panic.as_ref().map(|p| p as &dyn QemuArgs),
        ];
        let nics = self.net.iter().map(|n| n as &dyn QemuArgs);
        // NICs where the single NIC always was: after the shared fs.
        let (head, tail) = parts.split_at(13);
        for part in head
            .iter()
            .flatten()
            .copied()
            .chain(nics)
            .chain(tail.iter().flatten().copied())
        {
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
            cpu: machine::Cpu {
                accel,
                features: String::new(),
            },
            smp: machine::Smp {
                cpus: 2,
                max_cpus: None,
            },
            memory: machine::Memory {
                id: "mem".into(),
                size_mib: 512,
                hotplug: None,
            },
            boot: boot::DirectKernel {
                kernel: PathBuf::from("/k/vmlinux"),
                initrd: PathBuf::from("/k/initrd.img"),
                machine_params: String::new(),
                extra_params: "agent.log=debug".into(),
            },
            sandbox: sandbox::Sandbox(crate::options::Seccomp::On),
            console: console::SerialConsole,
            qmp: console::QmpSocket {
                path: PathBuf::from("/run/x/qmp.sock"),
            },
            qmp_events: console::QmpSocket {
                path: PathBuf::from("/run/x/qmp-events.sock"),
            },
            rng: Some(rng::Rng {
                source: PathBuf::from("/dev/urandom"),
                transport,
            }),
            vsock: vsock.with_transport(transport),
            fs: fs::SharedFs::VirtioFs {
                socket: PathBuf::from("/run/x/virtiofsd.sock"),
                tag: SHARED_FS_TAG.into(),
                transport,
            },
            net: Vec::new(),
            nic_ports: None,
            balloon: None,
            panic: Some(panic::PanicDevice),
        }
    }

    #[test]
    fn pod_nic_follows_the_machine_transport() {
        for (kind, device) in [
            (MachineType::Q35, "virtio-net-pci"),
            (MachineType::Microvm, "virtio-net-device"),
        ] {
            let mut c = cmdline(
                kind,
                ResolvedAccel::Tcg,
                vsock::VsockDevice::VhostUser {
                    socket: PathBuf::from("/run/x/vhost-vsock.sock"),
                    transport: Transport::Pci,
                },
            );
            assert!(!c.args().iter().any(|a| a == "-netdev"));
            c.net = vec![net::TapNic {
                index: 0,
                ifname: "tap0_kata".into(),
                mac: "ca:fe:00:00:00:01".into(),
                transport: machine::Machine::transport_of(kind),
            }];
            let args = c.args();
            let at = args.iter().position(|a| a == "-netdev").expect("a -netdev");
            assert_eq!(
                args[at + 1],
                "tap,id=net0,ifname=tap0_kata,script=no,downscript=no,vhost=off"
            );
            assert_eq!(
                args[at + 3],
                format!("{device},id=nic0,netdev=net0,mac=ca:fe:00:00:00:01")
            );
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
            "-accel", "tcg,thread=multi,tb-size=32",
            "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
            "-m", "512M",
            "-smp", "2",
            "-cpu", "max,erms=off",
            "-kernel", "/k/vmlinux",
            "-initrd", "/k/initrd.img",
            "-append", "console=ttyS0 panic=-1 reboot=k memhp_default_state=online quiet no_timer_check agent.log=debug",
            "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
            "-nodefaults", "-no-user-config", "-nographic", "-serial", "stdio", "-no-reboot",
            "-qmp", "unix:/run/x/qmp.sock,server=on,wait=off",
            "-qmp", "unix:/run/x/qmp-events.sock,server=on,wait=off",
            "-object", "rng-random,id=rng,filename=/dev/urandom",
            "-device", "virtio-rng-pci,rng=rng",
            "-chardev", "socket,id=vsock,path=/run/x/vhost-vsock.sock",
            "-device", "vhost-user-vsock-pci,chardev=vsock,id=vsock0",
            "-chardev", "socket,id=fs,path=/run/x/virtiofsd.sock",
            "-device", "vhost-user-fs-pci,chardev=fs,tag=kataShared",
            "-device", "pvpanic,id=pvpanic0", "-action", "panic=exit-failure",
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
            s.contains("-device vhost-user-vsock-device,chardev=vsock,id=vsock0"),
            "{s}"
        );
        assert!(
            s.contains("-device vhost-user-fs-device,chardev=fs,tag=kataShared"),
            "{s}"
        );
        assert!(s.contains("-device virtio-rng-device,rng=rng"), "{s}");
        assert!(!s.contains("-pci"), "{s}");
        // microvm has an ISA bus (serial, PIT, RTC): the ISA pvpanic fits.
        assert!(s.contains("-device pvpanic,id=pvpanic0"), "{s}");
    }

    #[test]
    fn virtio_9p_needs_no_daemon_socket() {
        for (kind, device) in [
            (MachineType::Q35, "virtio-9p-pci"),
            (MachineType::Microvm, "virtio-9p-device"),
        ] {
            let mut c = cmdline(
                kind,
                ResolvedAccel::Tcg,
                vsock::VsockDevice::Vhost {
                    cid: 3,
                    transport: Transport::Pci,
                },
            );
            c.fs = fs::SharedFs::Virtio9p {
                path: PathBuf::from("/run/sb,1/shared"),
                tag: SHARED_FS_TAG.into(),
                transport: machine::Machine::transport_of(kind),
            };
            let s = joined(&c);
            assert!(
                s.contains(
                    "-fsdev local,id=fs,path=/run/sb,,1/shared,security_model=none,multidevs=remap"
                ),
                "{s}"
            );
            assert!(
                s.contains(&format!("-device {device},fsdev=fs,mount_tag=kataShared")),
                "{s}"
            );
            assert!(
                !s.contains("virtiofsd") && !s.contains("vhost-user-fs"),
                "{s}"
            );
        }
    }

    #[test]
    fn options_shape_the_command_line() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut c = crate::config::tests::valid_config(d.path());
        c.vcpus = 1;
        let dev = vsock::VsockDevice::Vhost {
            cid: 5,
            transport: Transport::Pci,
        };
        let options = VmOptions {
            seccomp: crate::options::Seccomp::Off,
            entropy_source: None,
            cpu_features: "pmu=off,-vmx".into(),
            max_vcpus: Some(2),
            memory_hotplug: Some(crate::options::MemoryHotplug {
                slots: 4,
                max_mib: 1024,
            }),
            shared_fs: SharedFsKind::VirtioFs,
            ..VmOptions::default()
        };
        let s = CommandLine::for_config(&c, &options, ResolvedAccel::Tcg, dev.clone())
            .args()
            .join(" ");
        assert!(s.contains("-cpu max,erms=off,pmu=off,-vmx"), "{s}");
        assert!(s.contains("-smp 1,maxcpus=2"), "{s}");
        assert!(s.contains("-m 256M,slots=4,maxmem=1024M"), "{s}");
        assert!(!s.contains("-sandbox") && !s.contains("rng"), "{s}");
        let s = CommandLine::for_config(&c, &VmOptions::default(), ResolvedAccel::Kvm, dev)
            .args()
            .join(" ");
        assert!(s.contains("-cpu host -kernel"), "{s}");
        assert!(s.contains("-smp 1 ") && s.contains("-m 256M "), "{s}");
        assert!(s.contains("-sandbox on,"), "{s}");
        assert!(s.contains("filename=/dev/urandom"), "{s}");
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
        let s = CommandLine::for_config(&c, &VmOptions::default(), ResolvedAccel::Tcg, dev)
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
            s.contains("-append console=ttyS0 panic=-1 reboot=k memhp_default_state=online quiet"),
            "{s}"
        );
        assert!(s.contains("-smp 2"), "{s}");
        assert!(s.contains("path=/run/vc/sb1/virtiofsd.sock"), "{s}");
        assert!(
            s.contains("-device pvpanic,id=pvpanic0 -action panic=exit-failure"),
            "{s}"
        );
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
        c.fs = fs::SharedFs::VirtioFs {
            socket: PathBuf::from("/run/a,b/virtiofsd.sock"),
            tag: SHARED_FS_TAG.into(),
            transport: Transport::Pci,
        };
        assert!(joined(&c).contains("path=/run/a,,b/virtiofsd.sock"));
    }
}
