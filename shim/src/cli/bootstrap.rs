//! containerd ≥ 2.3 starts a shim with a `BootstrapParams` protobuf
//! (`containerd.runtime.bootstrap.v1`) on stdin: instance id, namespace,
//! log level, containerd's version, its ttrpc and grpc addresses, the
//! publish binary, extensions (the runtime options as an `Any`) and the
//! socket directory. Older containerd writes the runtime options `Any`
//! there, or nothing. `start` takes the bootstrap's values before the flags
//! and environment variables containerd marks for removal.

use protocols::containerd::bootstrap_api::BootstrapParams;
use protocols::containerd::protobuf::Message;

use super::flags::Flags;

/// What `start` learned from stdin.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bootstrap {
    /// containerd's ttrpc address for events (replaces `TTRPC_ADDRESS`).
    pub ttrpc_address: String,
    /// containerd's version, for the log.
    pub containerd_version: String,
    /// Where to put the daemon's socket (default `/run/containerd/s`).
    pub socket_dir: Option<String>,
    /// `runtimeoptions.v1.Options.config_path` from the extensions.
    pub config_path: Option<String>,
}

/// Reads stdin's bytes: `Some` when they are a 2.3+ `BootstrapParams`,
/// after applying its values to `flags`; `None` for anything else (the
/// runtime options `Any` of older containerd, nothing, junk).
pub fn apply(stdin: &[u8], flags: &mut Flags) -> Option<Bootstrap> {
    let params = parse(stdin)?;
    let set = |slot: &mut String, value: &str| {
        if !value.is_empty() {
            *slot = value.to_owned();
        }
    };
    set(&mut flags.id, &params.instance_id);
    set(&mut flags.namespace, &params.namespace);
    set(&mut flags.address, &params.containerd_grpc_address);
    set(&mut flags.publish_binary, &params.containerd_binary);
    // The open enum: negative values are more verbose than INFO (0).
    if params.log_level.value() < 0 {
        flags.debug = true;
    }
    let config_path = params
        .extensions
        .iter()
        .find_map(|ext| crate::service::create::config_path_option(ext.value.as_ref()));
    Some(Bootstrap {
        ttrpc_address: params.containerd_ttrpc_address.clone(),
        containerd_version: params.containerd_version.clone(),
        socket_dir: params.socket_dir.clone().filter(|d| !d.is_empty()),
        config_path,
    })
}

/// A `BootstrapParams`, told apart from the runtime options `Any` (whose
/// field 1, the type URL, would read as an instance id): only containerd
/// 2.3+ sets the ttrpc address (field 5) or its version (field 4).
fn parse(stdin: &[u8]) -> Option<BootstrapParams> {
    if stdin.is_empty() {
        return None;
    }
    let params = BootstrapParams::parse_from_bytes(stdin).ok()?;
    if params.containerd_ttrpc_address.is_empty() && params.containerd_version.is_empty() {
        return None;
    }
    Some(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocols::containerd::bootstrap_api::{Extension, LogLevel};
    use protocols::protobuf::well_known_types::any::Any;

    /// The bytes containerd 2.3.4 wrote for `ctr run --runtime-config-path
    /// /tmp/dump23/kc.toml` (captured on this machine).
    const CAPTURED: &[u8] = b"\x0a\x02x2\x12\x07default\x22\x06v2.3.4\
\x2a\x18/tmp/dump23/c.sock.ttrpc\
\x32\x12/tmp/dump23/c.sock\
\x3a\x2e/work/shared/tools/containerd-2.3.4/containerd\
\x42\x34\x0a\x32\x0a\x19runtimeoptions.v1.Options\x12\x15\x12\x13/tmp/dump23/kc.toml\
\x4a\x11/run/containerd/s";

    #[test]
    fn reads_what_containerd_2_3_writes() {
        let mut flags = Flags {
            id: "flag-id".into(),
            namespace: "flag-ns".into(),
            ..Default::default()
        };
        let b = apply(CAPTURED, &mut flags).expect("a bootstrap");
        assert_eq!(flags.id, "x2");
        assert_eq!(flags.namespace, "default");
        assert_eq!(flags.address, "/tmp/dump23/c.sock");
        assert_eq!(
            flags.publish_binary,
            "/work/shared/tools/containerd-2.3.4/containerd"
        );
        assert!(!flags.debug, "INFO is not debug");
        assert_eq!(b.ttrpc_address, "/tmp/dump23/c.sock.ttrpc");
        assert_eq!(b.containerd_version, "v2.3.4");
        assert_eq!(b.socket_dir.as_deref(), Some("/run/containerd/s"));
        assert_eq!(b.config_path.as_deref(), Some("/tmp/dump23/kc.toml"));
    }

    #[test]
    fn debug_level_and_round_trip() {
        let p = BootstrapParams {
            instance_id: "pod".into(),
            namespace: "k8s.io".into(),
            log_level: LogLevel::LOG_LEVEL_DEBUG.into(),
            containerd_ttrpc_address: "/c.ttrpc".into(),
            extensions: vec![Extension {
                value: Some(Any {
                    type_url: "other.v1.Thing".into(),
                    ..Default::default()
                })
                .into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let bytes = p.write_to_bytes().expect("encode");
        let mut flags = Flags::default();
        let b = apply(&bytes, &mut flags).expect("bootstrap");
        assert!(flags.debug);
        assert_eq!(flags.id, "pod");
        assert_eq!(b.config_path, None);
        assert_eq!(b.socket_dir, None);
    }

    #[test]
    fn older_stdin_is_not_a_bootstrap() {
        let mut flags = Flags {
            id: "c1".into(),
            ..Default::default()
        };
        assert_eq!(apply(b"", &mut flags), None);
        assert_eq!(apply(b"\xff\xff\xff", &mut flags), None);
        // containerd ≤ 2.2: the runtime options Any.
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value: b"\x12\x0b/etc/k.toml".to_vec(),
            ..Default::default()
        };
        let bytes = any.write_to_bytes().expect("encode");
        assert_eq!(apply(&bytes, &mut flags), None);
        assert_eq!(flags.id, "c1", "flags untouched");
    }
}
