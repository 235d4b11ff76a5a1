//! containerd + CNI configuration for a private containerd with the CRI
//! plugin, rendered from the templates in `tests/cri/`.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{repo_root, Release};

/// Subnet of the test pods' bridge network. No gateway on the host, no
/// masquerading, no default route in the pods: pod traffic stays on the
/// bridge, between network namespaces the tests created.
pub const POD_SUBNET: &str = "10.247.0.0/16";

/// Where a private containerd keeps its CNI configuration.
pub fn cni_conf_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("cni/net.d")
}

/// A bridge name for this test process's containerd number `n` (at most 15 bytes).
pub fn bridge_name(n: u32) -> String {
    format!("kc{}x{n}", std::process::id() % 10_000_000)
}

fn template(name: &str) -> Result<String> {
    let path = repo_root().join("tests/cri").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// containerd's own TOML: CRI enabled, runtime handler `kata` with
/// `ConfigPath` = `kata_config`, CNI from `cni_conf_dir(dir)`; in
/// containerd 2.x's format (`version = 3`) for 2.x, where `shim_sandboxer`
/// picks `sandboxer = "shim"` (the shim's Sandbox API) over "podsandbox".
pub fn containerd_toml(
    release: Release,
    shim_sandboxer: bool,
    dir: &Path,
    socket: &Path,
    kata_config: &Path,
) -> Result<String> {
    let name = if release.is_v2() {
        "containerd2-cri.toml.in"
    } else {
        "containerd-cri.toml.in"
    };
    let sandboxer = if shim_sandboxer { "shim" } else { "podsandbox" };
    Ok(template(name)?
        .replace("@SANDBOXER@", sandboxer)
        .replace("@ROOT@", &dir.join("root").to_string_lossy())
        .replace("@STATE@", &dir.join("state").to_string_lossy())
        .replace("@SOCKET@", &socket.to_string_lossy())
        .replace("@SANDBOX_IMAGE@", super::PAUSE_IMAGE)
        .replace("@KATA_CONFIG@", &kata_config.to_string_lossy())
        .replace("@CNI_CONF_DIR@", &cni_conf_dir(dir).to_string_lossy()))
}

/// Writes the bridge + host-local + loopback network list for containerd in `dir`.
pub fn write_cni(dir: &Path, bridge: &str) -> Result<()> {
    let conf_dir = cni_conf_dir(dir);
    std::fs::create_dir_all(&conf_dir)?;
    let text = template("10-kata-cri.conflist.in")?
        .replace("@BRIDGE@", bridge)
        .replace("@SUBNET@", POD_SUBNET)
        .replace("@IPAM_DIR@", &dir.join("cni/ipam").to_string_lossy());
    std::fs::write(conf_dir.join("10-kata-cri.conflist"), text)?;
    Ok(())
}
