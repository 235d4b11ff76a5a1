//! Wire types of the project: the kata agent API (generated from `protos/`)
//! and, with the `containerd` feature, containerd's task and event API.
#![allow(clippy::all, unused_qualifications, unreachable_pub)]

macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, unknown_lints, unused_mut, unused_imports, unused_attributes, non_camel_case_types, non_snake_case, non_upper_case_globals, dead_code, unused_qualifications)]
        #[rustfmt::skip]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(agent, "agent.rs");
generated!(agent_ttrpc, "agent_ttrpc.rs");
generated!(health, "health.rs");
generated!(health_ttrpc, "health_ttrpc.rs");
generated!(oci, "oci.rs");
generated!(types, "types.rs");

pub use protobuf;
pub use ttrpc;

#[cfg(feature = "containerd")]
pub use containerd_shim_protos as containerd;

/// Upstream's agent vsock port.
pub const AGENT_VSOCK_PORT: u32 = 1024;
/// Upstream's conventional agent log port.
pub const AGENT_LOG_VSOCK_PORT: u32 = 1025;
/// Upstream's debug console port (`agent.debug_console_vport`): a shell in
/// the guest, served only when the kernel command line asks for it.
pub const DEBUG_CONSOLE_VSOCK_PORT: u32 = 1026;
/// The project's port-forward port (no upstream counterpart): the agent
/// relays each connection to a TCP port on the guest's loopback, which is
/// how containerd's CRI PortForward (a dial of `localhost:PORT` in the pod's
/// network namespace on the host) reaches the pod's containers. Always
/// served: it reaches only what the pod's own containers listen on.
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1027;

/// The port-forward handshake, both sides' limits. The host sends one line
/// `TCP <port>\n` (decimal, 1..=65535); the guest answers one line, `OK\n`
/// once it is connected to the port, else `ERR <reason>\n`, then both relay
/// bytes until both directions are closed.
pub mod port_forward {
    /// Longest request line accepted, newline included.
    pub const MAX_REQUEST: usize = 16;
    /// Longest answer line accepted, newline included.
    pub const MAX_ANSWER: usize = 128;
    /// The request's keyword.
    pub const REQUEST_PREFIX: &str = "TCP ";
    /// The answer when connected.
    pub const OK: &str = "OK";
    /// The start of a refusal.
    pub const ERR_PREFIX: &str = "ERR ";
}
/// What the project's guest agent prints on the console (its log at info
/// level) once it listens on vsock; the shim opens the vsock to clients on it.
pub const AGENT_READY_LINE: &str = "kata_agent: agent ready";

/// The parts of the shim/guest-agent contract that are not messages: where
/// the host's shared directory appears in the guest, its mount tag, and the
/// storage driver names (upstream kata's). Both sides read them from here.
pub mod share {
    /// Where the guest mounts the shared directory; a container's rootfs is
    /// `<GUEST_SHARED_DIR>/<container id>/rootfs`.
    pub const GUEST_SHARED_DIR: &str = "/run/kata-containers/shared/containers";
    /// The virtio-fs (or 9p) tag of the shared directory.
    pub const SHARED_FS_TAG: &str = "kataShared";

    /// `Storage.driver` values.
    pub mod driver {
        pub const VIRTIO_FS: &str = "virtio-fs";
        pub const NINE_P: &str = "9p";
        pub const EPHEMERAL: &str = "ephemeral";
        pub const LOCAL: &str = "local";
        pub const OVERLAYFS: &str = "overlayfs";
        /// Every driver the project's guest agent mounts (its `storage_handlers`).
        pub const ALL: [&str; 5] = [VIRTIO_FS, NINE_P, EPHEMERAL, LOCAL, OVERLAYFS];
    }
}
