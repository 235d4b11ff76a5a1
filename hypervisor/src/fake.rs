//! A scripted [`Hypervisor`] for the shim's unit tests: records every call,
//! answers as told, and lets the test make the VM "exit".

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::watch;

use crate::{Error, Hypervisor, Result, Vm, VmConfig, VsockEndpoint};

/// A call made on the fake, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Launch {
        id: String,
    },
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    Check {
        id: String,
    },
    Stop {
        id: String,
    },
    ResizeVcpus {
        id: String,
        count: u32,
    },
    AddMemory {
        id: String,
        size_mib: u32,
    },
    HotplugNic {
        id: String,
        tap: String,
        mac: String,
    },
}

#[derive(Debug, Default)]
struct Shared {
    calls: Vec<Call>,
    /// Answers for the next launches; empty = success.
    launch_results: VecDeque<Result<()>>,
    configs: Vec<VmConfig>,
    /// Options of every launch, in order.
    options: Vec<crate::VmOptions>,
}

/// A hypervisor whose VMs are plain in-memory objects.
#[derive(Debug, Clone)]
pub struct FakeHypervisor {
    shared: Arc<Mutex<Shared>>,
    endpoint: VsockEndpoint,
    vms: Arc<Mutex<Vec<FakeVmHandle>>>,
}

impl Default for FakeHypervisor {
    fn default() -> Self {
        Self::new(VsockEndpoint::Kernel { cid: 3 })
    }
}

impl FakeHypervisor {
    /// Every launched VM reports `endpoint` as its vsock.
    pub fn new(endpoint: VsockEndpoint) -> Self {
        Self {
            shared: Arc::default(),
            endpoint,
            vms: Arc::default(),
        }
    }

    /// Makes the next launch fail with `err` (queued, one per launch).
    pub fn fail_next_launch(&self, err: Error) {
        self.lock().launch_results.push_back(Err(err));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Configs passed to `launch`, in order.
    pub fn configs(&self) -> Vec<VmConfig> {
        self.lock().configs.clone()
    }

    /// Options passed to `launch`, in order.
    pub fn options(&self) -> Vec<crate::VmOptions> {
        self.lock().options.clone()
    }

    /// Handles of the VMs launched so far (to make them exit, look at their state).
    pub fn vms(&self) -> Vec<FakeVmHandle> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Hypervisor for FakeHypervisor {
    async fn launch(&self, config: VmConfig, options: &crate::VmOptions) -> Result<Box<dyn Vm>> {
        let result = {
            let mut s = self.lock();
            s.options.push(options.clone());
            s.calls.push(Call::Launch {
                id: config.id.clone(),
            });
            s.configs.push(config.clone());
            s.launch_results.pop_front().unwrap_or(Ok(()))
        };
        result?;
        let (exit_tx, exit_rx) = watch::channel(None);
        let handle = FakeVmHandle {
            events: tokio::sync::broadcast::channel(16).0,
            exit: Arc::new(exit_tx),
            state: Arc::new(Mutex::new(FakeVmState {
                console: "fake console".into(),
                ..Default::default()
            })),
        };
        self.vms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle.clone());
        Ok(Box::new(FakeVm {
            machine: config.machine,
            id: config.id,
            endpoint: self.endpoint.clone(),
            shared: self.shared.clone(),
            handle,
            exit_rx,
        }))
    }
}

#[derive(Debug, Default, Clone)]
pub struct FakeVmState {
    pub paused: bool,
    pub stopped: bool,
    pub console: String,
    /// vCPUs after the last resize (0 = never resized).
    pub vcpus: u32,
    /// Memory hot-plugged so far.
    pub added_memory_mib: u32,
    /// NICs hot-plugged so far.
    pub hotplugged_nics: Vec<crate::NicConfig>,
}

/// The test's side of a fake VM.
#[derive(Debug, Clone)]
pub struct FakeVmHandle {
    exit: Arc<watch::Sender<Option<String>>>,
    state: Arc<Mutex<FakeVmState>>,
    events: tokio::sync::broadcast::Sender<crate::VmEvent>,
}

impl FakeVmHandle {
    /// Delivers a QEMU event to the VM's subscribers.
    pub fn emit(&self, event: crate::VmEvent) {
        let _ = self.events.send(event);
    }

    /// Simulates QEMU dying: `wait_exit` resolves.
    pub fn exit(&self, reason: &str) {
        self.exit.send_replace(Some(reason.to_string()));
    }

    pub fn state(&self) -> FakeVmState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_console(&self, text: &str) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).console = text.to_string();
    }
}

/// A VM of [`FakeHypervisor`].
#[derive(Debug)]
pub struct FakeVm {
    id: String,
    /// microvm VMs refuse NIC hotplug, as QEMU's do.
    machine: crate::MachineType,
    endpoint: VsockEndpoint,
    shared: Arc<Mutex<Shared>>,
    handle: FakeVmHandle,
    exit_rx: watch::Receiver<Option<String>>,
}

impl FakeVm {
    fn record(&self, call: Call) {
        self.shared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .calls
            .push(call);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeVmState> {
        self.handle.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exited(&self) -> bool {
        self.exit_rx.borrow().is_some()
    }
}

#[async_trait]
impl Vm for FakeVm {
    fn vsock(&self) -> VsockEndpoint {
        self.endpoint.clone()
    }

    fn console_tail(&self) -> String {
        self.state().console.clone()
    }

    fn pids(&self) -> Vec<u32> {
        vec![]
    }

    async fn wait_exit(&self) {
        let mut rx = self.exit_rx.clone();
        let _ = rx.wait_for(Option::is_some).await;
    }

    fn exit_reason(&self) -> Option<String> {
        self.exit_rx.borrow().clone()
    }

    async fn pause(&self) -> Result<()> {
        self.record(Call::Pause {
            id: self.id.clone(),
        });
        if self.exited() {
            return Err(Error::Exited);
        }
        self.state().paused = true;
        Ok(())
    }

    async fn resume(&self) -> Result<()> {
        self.record(Call::Resume {
            id: self.id.clone(),
        });
        if self.exited() {
            return Err(Error::Exited);
        }
        self.state().paused = false;
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        self.record(Call::Check {
            id: self.id.clone(),
        });
        if self.exited() {
            Err(Error::Exited)
        } else {
            Ok(())
        }
    }

    fn subscribe_events(&self) -> Option<tokio::sync::broadcast::Receiver<crate::VmEvent>> {
        Some(self.handle.events.subscribe())
    }

    async fn resize_vcpus(&self, count: u32) -> Result<u32> {
        self.record(Call::ResizeVcpus {
            id: self.id.clone(),
            count,
        });
        if self.exited() {
            return Err(Error::Exited);
        }
        self.state().vcpus = count;
        Ok(count)
    }

    async fn add_memory(&self, size_mib: u32) -> Result<()> {
        self.record(Call::AddMemory {
            id: self.id.clone(),
            size_mib,
        });
        if self.exited() {
            return Err(Error::Exited);
        }
        self.state().added_memory_mib += size_mib;
        Ok(())
    }

    async fn hotplug_nic(&self, nic: &crate::NicConfig) -> Result<()> {
        self.record(Call::HotplugNic {
            id: self.id.clone(),
            tap: nic.tap.clone(),
            mac: nic.mac.clone(),
        });
        if self.exited() {
            return Err(Error::Exited);
        }
        if self.machine == crate::MachineType::Microvm {
            return Err(Error::Unsupported(
                "NIC hotplug on microvm (no PCI hotplug)",
            ));
        }
        crate::config::validate_nic(nic)?;
        self.state().hotplugged_nics.push(nic.clone());
        Ok(())
    }

    async fn stop(&self) -> Result<()> {
        self.record(Call::Stop {
            id: self.id.clone(),
        });
        self.state().stopped = true;
        self.handle.exit.send_if_modified(|v| {
            if v.is_none() {
                *v = Some("stopped".into());
                true
            } else {
                false
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn fake_records_and_exits() {
        let d = tempfile::tempdir().expect("tempdir");
        let hv = FakeHypervisor::default();
        let cfg = crate::config::tests::valid_config(d.path());
        hv.fail_next_launch(Error::InvalidConfig("scripted".into()));
        assert!(hv.launch(cfg.clone(), &Default::default()).await.is_err());
        let vm = hv.launch(cfg, &Default::default()).await.expect("launch");
        assert_eq!(vm.vsock(), VsockEndpoint::Kernel { cid: 3 });
        vm.pause().await.expect("pause");
        assert!(hv.vms()[0].state().paused);
        vm.resume().await.expect("resume");
        assert_eq!(vm.resize_vcpus(2).await.expect("resize"), 2);
        vm.add_memory(128).await.expect("memory");
        assert_eq!(hv.vms()[0].state().added_memory_mib, 128);
        let nic = crate::NicConfig {
            tap: "tap1_kata".into(),
            mac: "ca:fe:00:00:00:02".into(),
        };
        vm.hotplug_nic(&nic).await.expect("NIC hotplug");
        assert_eq!(hv.vms()[0].state().hotplugged_nics, vec![nic.clone()]);
        let mut events = vm.subscribe_events().expect("events");
        hv.vms()[0].emit(crate::VmEvent::Stop);
        assert_eq!(events.try_recv().expect("event"), crate::VmEvent::Stop);
        hv.vms()[0].exit("killed");
        tokio::time::timeout(Duration::from_secs(1), vm.wait_exit())
            .await
            .expect("exit seen");
        assert_eq!(vm.exit_reason().as_deref(), Some("killed"));
        vm.stop().await.expect("stop");
        assert_eq!(
            hv.calls(),
            vec![
                Call::Launch { id: "sb1".into() },
                Call::Launch { id: "sb1".into() },
                Call::Pause { id: "sb1".into() },
                Call::Resume { id: "sb1".into() },
                Call::ResizeVcpus {
                    id: "sb1".into(),
                    count: 2
                },
                Call::AddMemory {
                    id: "sb1".into(),
                    size_mib: 128
                },
                Call::HotplugNic {
                    id: "sb1".into(),
                    tap: "tap1_kata".into(),
                    mac: "ca:fe:00:00:00:02".into()
                },
                Call::Stop { id: "sb1".into() },
            ]
        );
    }
}

#[cfg(test)]
mod nic_tests {
    use super::*;

    #[tokio::test]
    async fn microvm_refuses_nic_hotplug_and_bad_names_are_refused() {
        let d = tempfile::tempdir().expect("tempdir");
        let hv = FakeHypervisor::default();
        let mut cfg = crate::config::tests::valid_config(d.path());
        cfg.machine = crate::MachineType::Microvm;
        let vm = hv
            .launch(cfg.clone(), &Default::default())
            .await
            .expect("launch");
        let nic = crate::NicConfig {
            tap: "tap1_kata".into(),
            mac: "ca:fe:00:00:00:02".into(),
        };
        assert!(matches!(
            vm.hotplug_nic(&nic).await,
            Err(Error::Unsupported(_))
        ));
        cfg.machine = crate::MachineType::Q35;
        let vm = hv.launch(cfg, &Default::default()).await.expect("launch");
        let bad = crate::NicConfig {
            tap: "tap,x".into(),
            mac: nic.mac.clone(),
        };
        assert!(matches!(
            vm.hotplug_nic(&bad).await,
            Err(Error::InvalidConfig(_))
        ));
        assert!(hv.vms()[1].state().hotplugged_nics.is_empty());
    }
}
