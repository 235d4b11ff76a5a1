//! `containerd-shim-kata-v2`: containerd's runtime `io.containerd.kata.v2`,
//! running each pod's containers in a QEMU VM through the kata agent. The
//! work is in the library; this is the command line.

use containerd_shim_kata_v2::cli;

use std::io::Write;

use anyhow::Context;
use protocols::containerd::protobuf::Message;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("containerd-shim-kata-v2: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> anyhow::Result<()> {
    let args: Vec<_> = std::env::args_os().collect();
    if let Some(cmd) = args.get(1).and_then(|a| a.to_str()) {
        if cli::ops::COMMANDS.contains(&cmd) {
            let rest: Vec<String> = args[2..]
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let code = cli::ops::main(cmd, &rest)?;
            std::process::exit(code);
        }
    }
    let flags = cli::flags::parse(&args[1..]).context("parsing arguments")?;
    if flags.version {
        println!("containerd-shim-kata-v2:");
        println!("  Version: {}", env!("CARGO_PKG_VERSION"));
        return Ok(());
    }
    if flags.info {
        let info = protocols::containerd::types::introspection::RuntimeInfo {
            name: "io.containerd.kata.v2".into(),
            ..Default::default()
        };
        let mut out = std::io::stdout();
        out.write_all(&info.write_to_bytes()?)?;
        return Ok(out.flush()?);
    }
    match flags.action.as_str() {
        "start" => cli::start::run(&flags),
        "delete" => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cli::delete::run(&flags)),
        "" => cli::daemon::run(flags),
        other => anyhow::bail!("unknown action {other:?} (start, delete)"),
    }
}
