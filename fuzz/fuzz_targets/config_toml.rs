//! `configuration.toml` (`shim::config::parse`), then the pod annotations
//! applied to an accepted configuration. Properties of an accepted file:
//! its invariants hold (≥ 1 vCPU and MiB, hotplug room above the boot size,
//! memory slots 1..=256, paths set, extra virtiofsd options ours-free) and
//! keep holding after `with_annotations`; no input panics.
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use containerd_shim_kata_v2::config::{self, Config};
use hypervisor::MachineType;
use libfuzzer_sys::fuzz_target;

fn check(c: &Config) {
    let q = &c.qemu;
    assert!(q.vcpus >= 1 && q.memory_mib >= 1);
    assert!(!q.path.as_os_str().is_empty());
    assert!(!q.kernel.as_os_str().is_empty() && !q.initrd.as_os_str().is_empty());
    if let Some(max) = q.options.max_vcpus {
        assert!(max >= q.vcpus, "max_vcpus {max} < vcpus {}", q.vcpus);
    }
    if let Some(h) = &q.options.memory_hotplug {
        assert!(h.max_mib > q.memory_mib);
        assert!((1..=256).contains(&h.slots));
    }
    if q.machine == MachineType::Microvm {
        assert!(q.options.max_vcpus.is_none() && q.options.memory_hotplug.is_none());
    }
    for a in &q.options.virtio_fs_extra_args {
        assert!(a.starts_with('-'));
        let name = a.split('=').next().unwrap_or("");
        assert!(![
            "--socket-path",
            "--shared-dir",
            "--sandbox",
            "--cache",
            "--fd"
        ]
        .contains(&name));
    }
    if let Some(e) = &q.options.entropy_source {
        assert!(e.is_absolute());
    }
    assert!(!q.options.cpu_features.contains(char::is_whitespace));
    assert!(c.agent_dial_timeout.as_secs() >= 1);
}

fuzz_target!(|data: &[u8]| {
    // The file, then optionally a NUL and `key=value` annotation lines.
    let (file, ann) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let _ = config::unknown_keys(text);
    let Ok(c) = config::parse(text, Path::new("/fuzz/configuration.toml")) else {
        return;
    };
    check(&c);
    let pod: HashMap<String, String> = String::from_utf8_lossy(ann)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if let Ok(c2) = c.with_annotations(&pod) {
        check(&c2);
        assert_eq!(c2.qemu.kernel, c.qemu.kernel);
        assert_eq!(c2.qemu.initrd, c.qemu.initrd);
        assert!(c2
            .qemu
            .kernel_params
            .starts_with(c.qemu.kernel_params.trim()));
    }
});
