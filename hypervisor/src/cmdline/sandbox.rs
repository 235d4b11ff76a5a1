//! QEMU's seccomp sandbox.

use super::QemuArgs;
use crate::options::Seccomp;

/// `-sandbox on,…`: after start-up QEMU may not exec, fork helpers, raise
/// privileges, change scheduling/affinity or use obsolete system calls.
#[derive(Debug, Clone, Copy)]
pub struct Sandbox(pub Seccomp);

impl QemuArgs for Sandbox {
    fn append_to(&self, args: &mut Vec<String>) {
        if self.0 == Seccomp::On {
            args.push("-sandbox".into());
            args.push(
                "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
            );
        }
    }
}
