//! The spec's seccomp profile (`linux.seccomp`) in the agent's form, so the
//! guest applies exactly what CRI's RuntimeDefault or a Localhost profile
//! says. What the kata protocol cannot carry is refused, never dropped.

use oci_spec::runtime::LinuxSeccomp;
use protocols::oci as grpc;
use serde_json::Value;

use crate::error::{Error, Result};

/// EPERM: what an ERRNO default answers in the guest (the kata protocol
/// has no `defaultErrnoRet`).
const DEFAULT_ERRNO: u64 = 1;

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn string(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn bad(what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("linux.seccomp: {what}"))
}

/// Converts the profile. The OCI JSON spelling (`SCMP_ACT_ERRNO`,
/// `SCMP_ARCH_X86_64`, `SCMP_CMP_EQ`, …) is what the agent expects, so the
/// values are taken from the spec's own serialisation.
pub fn to_agent(profile: &LinuxSeccomp) -> Result<grpc::LinuxSeccomp> {
    let v = serde_json::to_value(profile).map_err(bad)?;
    if let Some(ret) = v.get("defaultErrnoRet").and_then(Value::as_u64) {
        if ret != DEFAULT_ERRNO {
            return Err(bad(format!(
                "defaultErrnoRet {ret} is not supported (the guest answers EPERM)"
            )));
        }
    }
    if v.get("listenerPath").is_some_and(|p| !p.is_null()) {
        return Err(bad(
            "listenerPath (SCMP_ACT_NOTIFY agents) is not supported",
        ));
    }
    let mut out = grpc::LinuxSeccomp {
        DefaultAction: string(&v["defaultAction"]),
        Architectures: strings(&v["architectures"]),
        Flags: strings(&v["flags"]),
        ..Default::default()
    };
    for s in v["syscalls"].as_array().into_iter().flatten() {
        let mut sc = grpc::LinuxSyscall {
            Names: strings(&s["names"]),
            Action: string(&s["action"]),
            ..Default::default()
        };
        if let Some(ret) = s.get("errnoRet").and_then(Value::as_u64) {
            let ret = u32::try_from(ret).map_err(|_| bad(format!("errnoRet {ret}")))?;
            sc.ErrnoRet = Some(grpc::linux_syscall::ErrnoRet::Errnoret(ret));
        }
        for a in s["args"].as_array().into_iter().flatten() {
            sc.Args.push(grpc::LinuxSeccompArg {
                Index: a["index"].as_u64().unwrap_or_default(),
                Value: a["value"].as_u64().unwrap_or_default(),
                ValueTwo: a["valueTwo"].as_u64().unwrap_or_default(),
                Op: string(&a["op"]),
                ..Default::default()
            });
        }
        out.Syscalls.push(sc);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(v: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(v).expect("valid profile")
    }

    #[test]
    fn runtime_default_style_profile_reaches_the_agent_whole() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [
                {"names": ["read", "write"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                          {"index": 1, "value": 255, "valueTwo": 3, "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
            ]
        }));
        let g = to_agent(&p).expect("converts");
        assert_eq!(g.DefaultAction, "SCMP_ACT_ERRNO");
        assert_eq!(g.Architectures, vec!["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]);
        assert_eq!(g.Flags, vec!["SECCOMP_FILTER_FLAG_LOG"]);
        assert_eq!(g.Syscalls.len(), 3);
        assert_eq!(g.Syscalls[0].Names, vec!["read", "write"]);
        assert_eq!(g.Syscalls[1].Args[1].Op, "SCMP_CMP_MASKED_EQ");
        assert_eq!(
            (g.Syscalls[1].Args[1].Value, g.Syscalls[1].Args[1].ValueTwo),
            (255, 3)
        );
        assert_eq!(g.Syscalls[2].errnoret(), 38);
        assert!(!g.Syscalls[0].has_errnoret());
    }

    #[test]
    fn what_the_protocol_cannot_carry_is_refused() {
        let p =
            profile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 38}));
        let e = to_agent(&p).expect_err("refused");
        assert!(e.to_string().contains("defaultErrnoRet"), "{e}");
        let p =
            profile(serde_json::json!({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1}));
        assert!(to_agent(&p).is_ok(), "EPERM is what the guest does anyway");
        let p = profile(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW",
            "listenerPath": "/run/seccomp-agent.sock"}));
        assert!(to_agent(&p).is_err());
    }
}
