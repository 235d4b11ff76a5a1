//! Entropy: a virtio-rng device fed from a host file.

use std::path::PathBuf;

use super::{escape, QemuArgs, Transport};

#[derive(Debug, Clone)]
pub struct Rng {
    /// Host file read for entropy, e.g. `/dev/urandom`.
    pub source: PathBuf,
    pub transport: Transport,
}

impl QemuArgs for Rng {
    fn append_to(&self, args: &mut Vec<String>) {
        args.push("-object".into());
        args.push(format!(
            "rng-random,id=rng,filename={}",
            escape(&self.source.to_string_lossy())
        ));
        args.push("-device".into());
        args.push(format!("{},rng=rng", self.transport.device("virtio-rng")));
    }
}
