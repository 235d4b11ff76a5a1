//! Kubernetes CRI through containerd's CRI plugin with runtime handler
//! `kata`: the containerd/CNI configuration ([`config`]), a CRI v1 gRPC
//! client over containerd's unix socket ([`client`]), CRI log parsing
//! ([`logs`]), exec/attach streaming ([`stream`]), a loopback image registry
//! ([`registry`]), cleanup of what a failed test left ([`cleanup`]) and
//! leak checks scoped to a test's own pods ([`vms`]).

pub mod cleanup;
pub mod client;
pub mod config;
pub mod logs;
pub mod registry;
pub mod stream;
pub mod vms;

pub use client::Cri;

/// The RuntimeClass handler name registered in containerd's CRI config.
pub const HANDLER: &str = "kata";
/// containerd namespace the CRI plugin uses.
pub const NAMESPACE: &str = "k8s.io";
/// `sandbox_image`: built offline by `tests/scripts/pause-image.sh`.
pub const PAUSE_IMAGE: &str = "docker.io/library/kata-pause:latest";
