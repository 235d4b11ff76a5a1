//! The command line containerd gives a shim (Go `flag` syntax: `-name value`,
//! `-name=value`, `--name`, booleans alone or `=true|false`), then the
//! action. Parsed here rather than through the `containerd-shim` crate,
//! which would bring ~180 crates (cgroups, D-Bus) into the shim for this.

use std::ffi::OsString;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    pub debug: bool,
    /// `-v`: print the version.
    pub version: bool,
    /// `-info`: print RuntimeInfo.
    pub info: bool,
    pub namespace: String,
    pub id: String,
    /// The daemon's own socket (`unix://…`), given by `start`.
    pub socket: String,
    /// containerd's GRPC address.
    pub address: String,
    pub publish_binary: String,
    pub bundle: String,
    /// `start`, `delete`, or empty for the daemon.
    pub action: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlagsError {
    #[error("flag provided but not defined: {0}")]
    Unknown(String),
    #[error("flag needs an argument: -{0}")]
    MissingValue(String),
    #[error("invalid boolean value {value:?} for -{flag}")]
    BadBool { flag: String, value: String },
    #[error("argument is not valid UTF-8: {0:?}")]
    NotUtf8(OsString),
    #[error("unexpected argument after the action: {0}")]
    Extra(String),
}

/// Parses the arguments after the program name.
pub fn parse(args: &[OsString]) -> Result<Flags, FlagsError> {
    let mut f = Flags::default();
    let mut args = args.iter().map(|a| {
        a.to_str()
            .map(str::to_owned)
            .ok_or_else(|| FlagsError::NotUtf8(a.clone()))
    });
    while let Some(arg) = args.next() {
        let arg = arg?;
        let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
            if !f.action.is_empty() {
                return Err(FlagsError::Extra(arg));
            }
            f.action = arg;
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (flag.to_owned(), None),
        };
        let boolean = |slot: &mut bool| -> Result<(), FlagsError> {
            *slot = match inline.as_deref() {
                None | Some("true") | Some("1") => true,
                Some("false") | Some("0") => false,
                Some(v) => {
                    return Err(FlagsError::BadBool {
                        flag: name.clone(),
                        value: v.to_owned(),
                    })
                }
            };
            Ok(())
        };
        match name.as_str() {
            "debug" => boolean(&mut f.debug)?,
            "v" => boolean(&mut f.version)?,
            "info" => boolean(&mut f.info)?,
            "namespace" | "id" | "socket" | "address" | "publish-binary" | "bundle" => {
                let value = match inline {
                    Some(v) => v,
                    None => args
                        .next()
                        .transpose()?
                        .ok_or_else(|| FlagsError::MissingValue(name.clone()))?,
                };
                let slot = match name.as_str() {
                    "namespace" => &mut f.namespace,
                    "id" => &mut f.id,
                    "socket" => &mut f.socket,
                    "address" => &mut f.address,
                    "publish-binary" => &mut f.publish_binary,
                    _ => &mut f.bundle,
                };
                *slot = value;
            }
            _ => return Err(FlagsError::Unknown(arg)),
        }
    }
    Ok(f)
}

/// Where the daemon of sandbox `id` listens: one socket per containerd
/// address, namespace and sandbox, short enough for `sun_path`.
pub fn socket_address(containerd_address: &str, namespace: &str, id: &str) -> String {
    socket_address_in("/run/containerd/s", containerd_address, namespace, id)
}

/// As [`socket_address`] in directory `dir` (containerd 2.3's bootstrap
/// may name one).
pub fn socket_address_in(dir: &str, containerd_address: &str, namespace: &str, id: &str) -> String {
    let digest = Sha256::digest(format!("{containerd_address}{namespace}{id}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("unix://{}/{hex}", dir.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn containerd_start_and_delete_lines() {
        let f = parse(&args(&[
            "-namespace",
            "k8s.io",
            "-address",
            "/run/containerd/containerd.sock",
            "-publish-binary",
            "/usr/bin/containerd",
            "-id",
            "c1",
            "-debug",
            "start",
        ]))
        .expect("parses");
        assert_eq!(
            (f.namespace.as_str(), f.id.as_str(), f.action.as_str()),
            ("k8s.io", "c1", "start")
        );
        assert_eq!(f.address, "/run/containerd/containerd.sock");
        assert_eq!(f.publish_binary, "/usr/bin/containerd");
        assert!(f.debug);
        let f = parse(&args(&["--id=c2", "-bundle=/b", "-debug=false", "delete"])).expect("ok");
        assert_eq!((f.id.as_str(), f.bundle.as_str()), ("c2", "/b"));
        assert!(!f.debug);
        assert_eq!(f.action, "delete");
        let f = parse(&args(&[
            "-namespace",
            "n",
            "-socket",
            "unix:///s",
            "-id",
            "x",
        ]))
        .expect("ok");
        assert_eq!(f.action, "", "no action: the daemon");
        assert_eq!(f.socket, "unix:///s");
        assert!(parse(&args(&["-v"])).expect("ok").version);
        assert!(parse(&args(&["-info"])).expect("ok").info);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(
            parse(&args(&["-bogus", "start"])),
            Err(FlagsError::Unknown("-bogus".into()))
        );
        assert_eq!(
            parse(&args(&["-id"])),
            Err(FlagsError::MissingValue("id".into()))
        );
        assert!(matches!(
            parse(&args(&["-debug=maybe"])),
            Err(FlagsError::BadBool { .. })
        ));
        assert_eq!(
            parse(&args(&["start", "delete"])),
            Err(FlagsError::Extra("delete".into()))
        );
    }

    #[test]
    fn socket_per_sandbox_fits_sun_path() {
        let a = socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1");
        assert_eq!(
            a,
            socket_address("/run/containerd/containerd.sock", "k8s.io", "pod1")
        );
        assert_ne!(
            a,
            socket_address("/run/containerd/containerd.sock", "k8s.io", "pod2")
        );
        assert!(a.trim_start_matches("unix://").len() < 108, "{a}");
    }
}
