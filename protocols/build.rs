//! Compiles the agent API's .proto files to async ttrpc Rust at build time,
//! with the pure-Rust parser (no `protoc` binary needed).
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let protos = [
        "protos/agent.proto",
        "protos/health.proto",
        "protos/oci.proto",
        "protos/types.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR set by cargo"));
    Codegen::new()
        .out_dir(&out)
        .inputs(protos)
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating ttrpc code from protos/");

    // The generated files open with inner attributes (`#![...]`), which
    // `include!` rejects; lib.rs sets the equivalent outer attributes.
    for entry in std::fs::read_dir(&out).expect("reading OUT_DIR") {
        let path = entry.expect("OUT_DIR entry").path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("reading generated file");
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !l.starts_with("#![") && !l.starts_with("//!"))
                .collect();
            std::fs::write(&path, kept.join("\n")).expect("rewriting generated file");
        }
    }
}
