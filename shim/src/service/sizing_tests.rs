//! Pod sizing on fakes: the VM sized at boot for its first container's
//! limits, grown at each later container's Create, never grown under
//! `static_sandbox_resource_mgmt`.

use std::path::PathBuf;

use hypervisor::fake::Call as VmCall;
use protocols::containerd::api;

use super::tests::{rig, Rig};

const HOTPLUG: &str = "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\ndefault_vcpus = 1\ndefault_memory = 256\n\
                       default_maxvcpus = 2\ndefault_maxmemory = 1024\nmemory_slots = 4\n";

fn grows(r: &Rig) -> Vec<VmCall> {
    r.hv.calls()
        .into_iter()
        .filter(|c| matches!(c, VmCall::ResizeVcpus { .. } | VmCall::AddMemory { .. }))
        .collect()
}

/// A bundle whose spec limits the container to `cpus` CPUs and `mib` MiB.
fn limited(r: &Rig, id: &str, annotations: serde_json::Value, cpus: i64, mib: i64) -> String {
    let b = r.bundle(id, annotations);
    let path = PathBuf::from(&b).join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    spec["linux"] = serde_json::json!({"resources": {
        "cpu": {"quota": cpus * 100_000, "period": 100_000},
        "memory": {"limit": mib << 20}
    }});
    std::fs::write(&path, spec.to_string()).expect("write");
    b
}

async fn create_bundle(r: &Rig, id: &str, bundle: String) {
    r.svc
        .do_create(api::CreateTaskRequest {
            id: id.into(),
            bundle,
            options: Some(r.options()).into(),
            ..Default::default()
        })
        .await
        .expect("create");
}

fn app(sandbox: &str) -> serde_json::Value {
    serde_json::json!({"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": sandbox})
}

/// `ctr run` with limits (no pod annotations): the VM boots with the
/// guest's share plus the container's limits, and nothing is hot-plugged.
#[tokio::test]
async fn a_first_container_s_limits_size_the_vm_at_boot() {
    let r = rig();
    std::fs::write(r.dir.path().join("kata.toml"), HOTPLUG).expect("config");
    let b = limited(&r, "c1", serde_json::json!({}), 1, 512);
    create_bundle(&r, "c1", b).await;
    let cfg = &r.hv.configs()[0];
    assert_eq!((cfg.vcpus, cfg.memory_mib), (2, 768));
    assert_eq!(grows(&r), []);
}

/// A container joining a running pod gets room at its Create: its limits
/// on top of the guest's share and the other containers' limits.
#[tokio::test]
async fn a_later_container_grows_the_vm_at_create() {
    let r = rig();
    std::fs::write(r.dir.path().join("kata.toml"), HOTPLUG).expect("config");
    r.create("pod", serde_json::json!({})).await.expect("pod");
    assert_eq!(grows(&r), []);
    let b = limited(&r, "a", app("pod"), 1, 300);
    create_bundle(&r, "a", b).await;
    // 256 + 300 MiB: 384 MiB more (whole 128 MiB blocks); 1 + 1 vCPUs.
    assert_eq!(
        grows(&r),
        [
            VmCall::ResizeVcpus {
                id: "pod".into(),
                count: 2
            },
            VmCall::AddMemory {
                id: "pod".into(),
                size_mib: 384
            }
        ]
    );
    let b = limited(&r, "b", app("pod"), 1, 100);
    create_bundle(&r, "b", b).await;
    // 256 + 300 + 100 = 656 > 640: one more block; vCPUs at the maximum.
    assert_eq!(
        grows(&r)[2..],
        [VmCall::AddMemory {
            id: "pod".into(),
            size_mib: 128
        }]
    );
}

/// `static_sandbox_resource_mgmt`: the VM keeps its boot size; Create and
/// Update only set the guest's limits.
#[tokio::test]
async fn static_resource_management_never_hotplugs() {
    let r = rig();
    std::fs::write(
        r.dir.path().join("kata.toml"),
        format!("{HOTPLUG}[runtime]\nstatic_sandbox_resource_mgmt = true\n"),
    )
    .expect("config");
    r.create("pod", serde_json::json!({})).await.expect("pod");
    r.start("pod", "").await.expect("start");
    let b = limited(&r, "a", app("pod"), 2, 600);
    create_bundle(&r, "a", b).await;
    r.start("a", "").await.expect("start");
    r.svc
        .do_update(api::UpdateTaskRequest {
            id: "a".into(),
            resources: Some(protocols::protobuf::well_known_types::any::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into(),
                value: br#"{"memory":{"limit":943718400}}"#.to_vec(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
        .await
        .expect("update reaches the guest");
    assert_eq!(grows(&r), []);
}
