//! Tests of the configuration file reader (`config.rs`).

use super::*;

fn parse_str(s: &str) -> Result<Config> {
    parse(s, Path::new("test.toml"))
}

#[test]
fn parses_the_shipped_template() {
    let text = include_str!("../configuration.toml.in")
        .replace("@ASSETS@", "/a")
        .replace("@BINDIR@", "/b");
    let c = parse_str(&text).expect("template parses");
    assert_eq!(c.qemu.kernel, PathBuf::from("/a/vmlinux"));
    assert_eq!(c.qemu.machine, MachineType::Q35);
    assert_eq!(c.qemu.accel, Accel::Auto);
    assert_eq!(c.qemu.virtiofsd, PathBuf::from("/b/virtiofsd"));
    assert_eq!(c.agent_dial_timeout, Duration::from_secs(60));
}

#[test]
fn rejects_bad_values_with_the_key_named() {
    let base = "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n";
    let err = parse_str(&format!("{base}machine_type = \"pc-i440fx\"")).unwrap_err();
    assert!(err.to_string().contains("machine_type"), "{err}");
    let err = parse_str(&format!("{base}default_vcpus = 0")).unwrap_err();
    assert!(err.to_string().contains("default_vcpus"), "{err}");
    let err = parse_str(&format!("{base}accel = \"hvf\"")).unwrap_err();
    assert!(err.to_string().contains("accel"), "{err}");
    let err = parse_str("[hypervisor.qemu]\ninitrd = \"/i\"").unwrap_err();
    assert!(err.to_string().contains("kernel"), "{err}");
    let err = parse_str("not toml [").unwrap_err();
    assert!(err.to_string().contains("test.toml"), "{err}");
}

#[test]
fn pod_annotations_apply_only_where_enabled() {
    let c = parse_str(
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\nkernel_params = \"a=1\"\nenable_annotations = [\"default_vcpus\", \"kernel_params\"]\n",
    )
    .expect("parses");
    let pod: std::collections::HashMap<String, String> = [
        ("io.katacontainers.config.hypervisor.default_vcpus", "2"),
        ("io.katacontainers.config.hypervisor.kernel_params", "b=2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let applied = c.with_annotations(&pod).expect("allowed");
    assert_eq!(applied.qemu.vcpus, 2);
    assert_eq!(applied.qemu.kernel_params, "a=1 b=2");
    let bad: std::collections::HashMap<String, String> = [(
        "io.katacontainers.config.hypervisor.path".to_owned(),
        "/tmp/evil".to_owned(),
    )]
    .into();
    let err = c.with_annotations(&bad).expect_err("not enabled");
    assert!(err.to_string().contains("path"), "{err}");
}

fn raw_with(extra: &str) -> RawQemu {
    let text = format!("[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\n{extra}");
    let raw: RawFile = toml::from_str(&text).expect("toml");
    raw.hypervisor.qemu.expect("section")
}

const HOST: HostLimits = HostLimits {
    cpus: 4,
    memory_mib: 8192,
};

fn options(extra: &str, machine: MachineType) -> Result<VmOptions> {
    vm_options(&raw_with(extra), machine, 1, 256, &HOST)
}

#[test]
fn vm_options_map_upstream_keys() {
    // Absent keys: this project's defaults.
    assert_eq!(
        options("", MachineType::Q35).expect("defaults"),
        VmOptions::default()
    );
    let o = options(
        "seccompsandbox = \"on,obsolete=deny\"\nentropy_source = \"/dev/random\"\n\
         cpu_features = \"pmu=off\"\ndefault_maxvcpus = 3\ndefault_maxmemory = 2048\n\
         memory_slots = 4\nshared_fs = \"virtio-9p\"\nvirtio_fs_cache = \"never\"\n\
         virtio_fs_extra_args = [\"--thread-pool-size=2\"]\n",
        MachineType::Q35,
    )
    .expect("valid");
    assert_eq!(o.seccomp, Seccomp::On);
    assert_eq!(o.entropy_source, Some(PathBuf::from("/dev/random")));
    assert_eq!(o.cpu_features, "pmu=off");
    assert_eq!(o.max_vcpus, Some(3));
    assert_eq!(
        o.memory_hotplug,
        Some(MemoryHotplug {
            slots: 4,
            max_mib: 2048
        })
    );
    assert_eq!(o.shared_fs, SharedFsKind::Virtio9p);
    assert_eq!(o.virtio_fs_cache, VirtioFsCache::Never);
    assert_eq!(o.virtio_fs_extra_args, ["--thread-pool-size=2"]);
    // Empty strings turn features off.
    let o = options(
        "seccompsandbox = \"\"\nentropy_source = \"\"\n",
        MachineType::Q35,
    )
    .expect("valid");
    assert_eq!((o.seccomp, o.entropy_source), (Seccomp::Off, None));
}

#[test]
fn hotplug_maxima_follow_kata() {
    // 0 = the whole host; above the host = clamped; equal to the boot size = no hotplug.
    let o = options(
        "default_maxvcpus = 0\ndefault_maxmemory = 0\n",
        MachineType::Q35,
    )
    .expect("valid");
    assert_eq!(o.max_vcpus, Some(4));
    assert_eq!(
        o.memory_hotplug.map(|h| (h.slots, h.max_mib)),
        Some((10, 8192))
    );
    let o = options(
        "default_maxvcpus = 64\ndefault_maxmemory = 99999\n",
        MachineType::Q35,
    )
    .expect("clamped");
    assert_eq!(o.max_vcpus, Some(4));
    assert_eq!(o.memory_hotplug.map(|h| h.max_mib), Some(8192));
    let o = options(
        "default_maxvcpus = 1\ndefault_maxmemory = 256\n",
        MachineType::Q35,
    )
    .expect("valid");
    assert_eq!((o.max_vcpus, o.memory_hotplug), (None, None));
    // microvm: upstream's 0 defaults are fine, real hotplug is an error.
    let o = options(
        "default_maxvcpus = 0\ndefault_maxmemory = 0\n",
        MachineType::Microvm,
    )
    .expect("microvm without hotplug");
    assert_eq!((o.max_vcpus, o.memory_hotplug), (None, None));
    let e = options("default_maxvcpus = 2\n", MachineType::Microvm).expect_err("microvm");
    assert!(e.to_string().contains("microvm"), "{e}");
}

#[test]
fn bad_vm_options_name_their_key() {
    for (extra, key) in [
        ("seccompsandbox = \"strict\"", "seccompsandbox"),
        ("entropy_source = \"urandom\"", "entropy_source"),
        ("cpu_features = \"a, b\"", "cpu_features"),
        ("shared_fs = \"virtio-fs-nydus\"", "shared_fs"),
        ("virtio_fs_cache = \"sometimes\"", "virtio_fs_cache"),
        (
            "virtio_fs_extra_args = [\"--cache=always\"]",
            "virtio_fs_extra_args",
        ),
        ("virtio_fs_extra_args = [\"plain\"]", "virtio_fs_extra_args"),
        ("default_maxvcpus = -1", "default_maxvcpus"),
        ("default_maxmemory = 128", "default_maxmemory"),
        ("default_maxmemory = 1024\nmemory_slots = 0", "memory_slots"),
    ] {
        let e = options(extra, MachineType::Q35).expect_err(extra);
        assert!(e.to_string().contains(key), "{extra}: {e}");
    }
    // Through the whole parse too, with the file's other keys.
    let e = parse_str("[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\nshared_fs = \"none\"")
        .expect_err("bad shared_fs");
    assert!(e.to_string().contains("shared_fs"), "{e}");
}

#[test]
fn microvm_annotation_drops_the_hotplug_room() {
    let c = parse_str(
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\ndefault_maxvcpus = 2\nenable_annotations = [\"machine_type\"]\n",
    )
    .expect("parses");
    assert!(c.qemu.options.max_vcpus.is_some() || HostLimits::probe().cpus == 1);
    let pod: std::collections::HashMap<String, String> = [(
        "io.katacontainers.config.hypervisor.machine_type".to_owned(),
        "microvm".to_owned(),
    )]
    .into();
    let c = c.with_annotations(&pod).expect("allowed");
    assert_eq!(c.qemu.machine, MachineType::Microvm);
    assert_eq!(c.qemu.options.max_vcpus, None);
}

#[test]
fn unknown_keys_are_listed_for_warning() {
    let text = "[hypervisor.qemu]\nkernel = \"/k\"\nblock_device_driver = \"x\"\n[runtime]\ninternetworking_model = \"tcfilter\"\n";
    assert_eq!(
        unknown_keys(text),
        vec![
            "hypervisor.qemu.block_device_driver",
            "runtime.internetworking_model"
        ]
    );
}

#[test]
fn unknown_kata_keys_are_accepted() {
    let c = parse_str(
        "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\nblock_device_driver = \"virtio-scsi\"\n[runtime]\ninternetworking_model = \"tcfilter\"\n",
    );
    assert!(c.is_ok());
}
