//! Task `Update`: containerd's `UpdateTaskRequest.resources` (an `Any` holding
//! the OCI `LinuxResources` as JSON) checked and turned into the agent's
//! `oci.LinuxResources`; also the OCI → agent conversion used for Create.

use oci_spec::runtime as oci;
use protocols::oci as grpc;
use protocols::protobuf::well_known_types::any::Any;
use protocols::protobuf::MessageField;

use crate::error::{Error, Result};

/// containerd registers the OCI type as
/// `types.containerd.io/opencontainers/runtime-spec/1/LinuxResources`
/// (JSON, as it is no protobuf); only the suffix is compared.
const LINUX_RESOURCES: &str = "opencontainers/runtime-spec/1/LinuxResources";

/// The kernel's bounds for cpu.cfs_period_us / cpu.max's period (1 ms .. 1 s).
const CPU_PERIOD_US: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;

/// Decodes, validates and converts the resources of an `UpdateTaskRequest`.
pub fn parse_update(any: &Any) -> Result<grpc::LinuxResources> {
    if !any.type_url.ends_with(LINUX_RESOURCES) {
        return Err(Error::InvalidArgument(format!(
            "update resources: unsupported type {:?} (want …/{LINUX_RESOURCES})",
            any.type_url
        )));
    }
    let r: oci::LinuxResources = serde_json::from_slice(&any.value).map_err(|e| {
        Error::InvalidArgument(format!(
            "update resources: invalid LinuxResources JSON: {e}"
        ))
    })?;
    validate(&r)?;
    Ok(oci_to_agent(&r))
}

/// `value` must be ≥ 0, or -1 (unlimited).
fn limit(field: &str, value: Option<i64>) -> Result<()> {
    match value {
        Some(v) if v < -1 => Err(Error::InvalidArgument(format!(
            "resources: {field} {v} is invalid (want ≥ 0, or -1 for unlimited)"
        ))),
        _ => Ok(()),
    }
}

/// Rejects values no cgroup accepts (0 means "unset" where allowed).
pub fn validate(r: &oci::LinuxResources) -> Result<()> {
    if let Some(m) = r.memory() {
        limit("memory.limit", m.limit())?;
        limit("memory.reservation", m.reservation())?;
        limit("memory.swap", m.swap())?;
        limit("memory.kernel", m.kernel())?;
        limit("memory.kernelTCP", m.kernel_tcp())?;
        // u64::MAX is Go's -1: "leave the default", as runc takes it.
        if let Some(s) = m.swappiness().filter(|s| *s > 100 && *s != u64::MAX) {
            return Err(Error::InvalidArgument(format!(
                "resources: memory.swappiness {s} is invalid (want 0..=100)"
            )));
        }
    }
    if let Some(c) = r.cpu() {
        limit("cpu.quota", c.quota())?;
        if let Some(p) = c.period().filter(|p| !CPU_PERIOD_US.contains(p)) {
            return Err(Error::InvalidArgument(format!(
                "resources: cpu.period {p} is invalid (want {}..={} µs)",
                CPU_PERIOD_US.start(),
                CPU_PERIOD_US.end()
            )));
        }
    }
    if let Some(p) = r.pids() {
        limit("pids.limit", Some(p.limit()))?;
    }
    Ok(())
}

/// The agent's form of OCI resources; unset values become 0 ("leave as is").
///
/// Not carried: device cgroup rules and per-device blkio weights/throttles
/// (host major:minor numbers mean nothing in the guest), network classid and
/// priorities, rdma, and the cgroup v2 `unified` map (no agent field).
pub fn oci_to_agent(r: &oci::LinuxResources) -> grpc::LinuxResources {
    let mut out = grpc::LinuxResources::default();
    if let Some(m) = r.memory() {
        out.Memory = MessageField::some(grpc::LinuxMemory {
            Limit: m.limit().unwrap_or(0),
            Reservation: m.reservation().unwrap_or(0),
            Swap: m.swap().unwrap_or(0),
            Kernel: m.kernel().unwrap_or(0),
            KernelTCP: m.kernel_tcp().unwrap_or(0),
            Swappiness: m.swappiness().unwrap_or(0),
            DisableOOMKiller: m.disable_oom_killer().unwrap_or(false),
            ..Default::default()
        });
    }
    if let Some(c) = r.cpu() {
        out.CPU = MessageField::some(grpc::LinuxCPU {
            Shares: c.shares().unwrap_or(0),
            Quota: c.quota().unwrap_or(0),
            Period: c.period().unwrap_or(0),
            RealtimeRuntime: c.realtime_runtime().unwrap_or(0),
            RealtimePeriod: c.realtime_period().unwrap_or(0),
            Cpus: c.cpus().clone().unwrap_or_default(),
            Mems: c.mems().clone().unwrap_or_default(),
            ..Default::default()
        });
    }
    if let Some(p) = r.pids() {
        out.Pids = MessageField::some(grpc::LinuxPids {
            Limit: p.limit(),
            ..Default::default()
        });
    }
    if let Some(b) = r.block_io() {
        out.BlockIO = MessageField::some(grpc::LinuxBlockIO {
            Weight: b.weight().map_or(0, u32::from),
            LeafWeight: b.leaf_weight().map_or(0, u32::from),
            ..Default::default()
        });
    }
    for h in r.hugepage_limits().iter().flatten() {
        out.HugepageLimits.push(grpc::LinuxHugepageLimit {
            Pagesize: h.page_size().clone(),
            // OCI's limit is signed; a negative one is no limit the guest can set.
            Limit: u64::try_from(h.limit()).unwrap_or(0),
            ..Default::default()
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

    fn any(json: &str) -> Any {
        Any {
            type_url: URL.into(),
            value: json.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    fn invalid(json: &str) -> String {
        match parse_update(&any(json)) {
            Err(Error::InvalidArgument(msg)) => msg,
            other => panic!("{json}: want InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn converts_what_cri_sends() {
        let r = parse_update(&any(
            r#"{"memory":{"limit":268435456,"reservation":134217728,"swap":536870912,
                "swappiness":60,"disableOOMKiller":true},
               "cpu":{"shares":512,"quota":50000,"period":100000,"cpus":"0-1","mems":"0"},
               "pids":{"limit":100},
               "blockIO":{"weight":500,"leafWeight":300},
               "hugepageLimits":[{"pageSize":"2MB","limit":4194304}],
               "devices":[{"allow":false,"access":"rwm"}],
               "unified":{"memory.high":"1000000"}}"#,
        ))
        .unwrap();
        let m = r.Memory.as_ref().unwrap();
        assert_eq!(
            (
                m.Limit,
                m.Reservation,
                m.Swap,
                m.Swappiness,
                m.DisableOOMKiller
            ),
            (268435456, 134217728, 536870912, 60, true)
        );
        let c = r.CPU.as_ref().unwrap();
        assert_eq!((c.Shares, c.Quota, c.Period), (512, 50000, 100000));
        assert_eq!((c.Cpus.as_str(), c.Mems.as_str()), ("0-1", "0"));
        assert_eq!(r.Pids.as_ref().unwrap().Limit, 100);
        let b = r.BlockIO.as_ref().unwrap();
        assert_eq!((b.Weight, b.LeafWeight), (500, 300));
        assert_eq!(r.HugepageLimits.len(), 1);
        assert_eq!(r.HugepageLimits[0].Pagesize, "2MB");
        assert_eq!(r.HugepageLimits[0].Limit, 4194304);
        assert!(r.Devices.is_empty(), "host device rules are not carried");
    }

    #[test]
    fn unset_sections_stay_unset_and_values_zero() {
        let r = parse_update(&any(r#"{"cpu":{"shares":0}}"#)).unwrap();
        assert!(r.Memory.is_none() && r.Pids.is_none() && r.BlockIO.is_none());
        let c = r.CPU.as_ref().unwrap();
        assert_eq!((c.Shares, c.Quota, c.Period), (0, 0, 0));
        assert!(parse_update(&any("{}")).unwrap().CPU.is_none());
    }

    #[test]
    fn minus_one_means_unlimited_and_is_accepted() {
        let r = parse_update(&any(
            r#"{"memory":{"limit":-1,"swap":-1},"cpu":{"quota":-1},"pids":{"limit":-1}}"#,
        ))
        .unwrap();
        assert_eq!(r.Memory.as_ref().unwrap().Limit, -1);
        assert_eq!(r.Memory.as_ref().unwrap().Swap, -1);
        assert_eq!(r.CPU.as_ref().unwrap().Quota, -1);
        assert_eq!(r.Pids.as_ref().unwrap().Limit, -1);
    }

    #[test]
    fn bad_values_name_field_and_value() {
        for (json, field, value) in [
            (r#"{"memory":{"limit":-2}}"#, "memory.limit", "-2"),
            (
                r#"{"memory":{"reservation":-5}}"#,
                "memory.reservation",
                "-5",
            ),
            (r#"{"memory":{"swap":-100}}"#, "memory.swap", "-100"),
            (
                r#"{"memory":{"swappiness":101}}"#,
                "memory.swappiness",
                "101",
            ),
            (r#"{"cpu":{"quota":-20000}}"#, "cpu.quota", "-20000"),
            (r#"{"cpu":{"period":0}}"#, "cpu.period", "0"),
            (r#"{"cpu":{"period":5000000}}"#, "cpu.period", "5000000"),
            (r#"{"pids":{"limit":-3}}"#, "pids.limit", "-3"),
        ] {
            let msg = invalid(json);
            assert!(msg.contains(field), "{json}: {msg}");
            assert!(msg.contains(value), "{json}: {msg}");
        }
    }

    #[test]
    fn negative_period_and_broken_json_are_invalid() {
        assert!(invalid(r#"{"cpu":{"period":-1}}"#).contains("JSON"));
        assert!(invalid("not json").contains("JSON"));
    }

    #[test]
    fn unknown_type_url_is_named() {
        let bad = Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/WindowsResources".into(),
            value: b"{}".to_vec(),
            ..Default::default()
        };
        match parse_update(&bad) {
            Err(Error::InvalidArgument(msg)) => assert!(msg.contains("WindowsResources"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oci_to_agent_maps_a_spec_section() {
        let r: oci::LinuxResources = serde_json::from_str(
            r#"{"memory":{"limit":1048576},"cpu":{"quota":1000,"period":10000,"realtimeRuntime":5,"realtimePeriod":6}}"#,
        )
        .unwrap();
        let a = oci_to_agent(&r);
        assert_eq!(a.Memory.as_ref().unwrap().Limit, 1048576);
        let c = a.CPU.as_ref().unwrap();
        assert_eq!(
            (c.Quota, c.Period, c.RealtimeRuntime, c.RealtimePeriod),
            (1000, 10000, 5, 6)
        );
    }
}
