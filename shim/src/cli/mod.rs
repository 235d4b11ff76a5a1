//! The binary's actions: `start`, `delete`, and the daemon (no action);
//! the operator commands of [`ops`] (`check`, `env`, `console`).

pub mod bootstrap;
pub mod check;
pub mod check_boot;
#[cfg(test)]
mod check_tests;
pub mod console;
pub mod daemon;
pub mod delete;
#[cfg(test)]
mod docs_tests;
pub mod env;
pub mod flags;
pub mod ops;
pub mod start;

use std::path::Path;

use crate::annotations::cri;

/// The sandbox a container belongs to: its CRI sandbox id when it is an app
/// container of a pod, else its own id (it is the sandbox). Read leniently:
/// a bundle that cannot be read groups by the container's own id, and
/// Create reports the real error.
pub fn sandbox_id_of(bundle: &Path, id: &str) -> String {
    let Ok(bytes) = std::fs::read(bundle.join("config.json")) else {
        return id.to_owned();
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return id.to_owned();
    };
    let ann = &json["annotations"];
    match (
        ann[cri::CONTAINER_TYPE].as_str(),
        ann[cri::SANDBOX_ID].as_str(),
    ) {
        (Some(cri::CONTAINER), Some(sid)) if !sid.is_empty() => sid.to_owned(),
        _ => id.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_app_containers_by_pod() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(sandbox_id_of(dir.path(), "c1"), "c1", "no config.json");
        std::fs::write(dir.path().join("config.json"), "not json").expect("write");
        assert_eq!(sandbox_id_of(dir.path(), "c1"), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"container","io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .expect("write");
        assert_eq!(sandbox_id_of(dir.path(), "c1"), "pod1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations":{"io.kubernetes.cri.container-type":"sandbox","io.kubernetes.cri.sandbox-id":"pod1"}}"#,
        )
        .expect("write");
        assert_eq!(sandbox_id_of(dir.path(), "pod1"), "pod1");
    }
}
