//! containerd's Task.Update resources (an `Any` holding OCI `LinuxResources`
//! as JSON) through `shim::oci_resources::parse_update`. Properties: only the
//! OCI LinuxResources type is taken; accepted limits are ≥ -1, a CPU period
//! is unset or within the kernel's 1 ms..1 s, swappiness ≤ 100 (or Go's -1);
//! no input panics.
#![no_main]

use containerd_shim_kata_v2::oci_resources::parse_update;
use libfuzzer_sys::fuzz_target;
use protocols::protobuf::well_known_types::any::Any;

const TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

fuzz_target!(|data: &[u8]| {
    // First byte: 0 = containerd's type URL, else the URL is the first line.
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (type_url, value) = if sel == 0 {
        (TYPE_URL.to_string(), rest)
    } else {
        match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (
                String::from_utf8_lossy(&rest[..i]).into_owned(),
                &rest[i + 1..],
            ),
            None => (String::new(), rest),
        }
    };
    let any = Any {
        type_url: type_url.clone(),
        value: value.to_vec(),
        ..Default::default()
    };
    let Ok(r) = parse_update(&any) else {
        return;
    };
    assert!(type_url.ends_with("opencontainers/runtime-spec/1/LinuxResources"));
    if let Some(m) = r.Memory.as_ref() {
        for v in [m.Limit, m.Reservation, m.Swap, m.Kernel, m.KernelTCP] {
            assert!(v >= -1, "memory value {v}");
        }
        assert!(m.Swappiness <= 100 || m.Swappiness == u64::MAX);
    }
    if let Some(c) = r.CPU.as_ref() {
        assert!(c.Quota >= -1);
        assert!(c.Period == 0 || (1_000..=1_000_000).contains(&c.Period));
    }
    if let Some(p) = r.Pids.as_ref() {
        assert!(p.Limit >= -1);
    }
});
