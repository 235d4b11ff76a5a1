//! Links the daemon as a fixed-address executable, as Debian's Go shims are:
//! a position-independent one has ~290 KiB of relocated pointers
//! (`.data.rel.ro`) that the loader dirties in every shim, one per pod.
fn main() {
    println!("cargo:rustc-link-arg-bin=containerd-shim-kata-v2=-no-pie");
}
