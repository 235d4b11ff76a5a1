//! The agent's `runtime` module's helpers, as `runtime/mod.rs` defines them.

#[path = "../../guest/agent/src/runtime/rootfs.rs"]
mod rootfs;

#[path = "../../guest/agent/src/runtime/seccomp.rs"]
pub mod seccomp;

#[path = "../../guest/agent/src/runtime/error.rs"]
mod error;

/// The agent's rootfs path resolver (`rootfs::under`).
pub fn resolve_under(root: &std::path::Path, path: &str) -> Option<std::path::PathBuf> {
    rootfs::under(root, path)
}
