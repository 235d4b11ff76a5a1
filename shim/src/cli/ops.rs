//! Operator commands (not called by containerd): `check`, `env`, `console`.
//! Their flags are GNU-style (`--json`), unlike the shim's Go-style ones.

use std::path::PathBuf;

use crate::config;

use super::check::{self, RealHost, Report};

/// The operator commands, dispatched before containerd's flags are parsed.
pub const COMMANDS: [&str; 4] = ["check", "env", "console", "metrics"];

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Shim(#[from] crate::error::Error),
    #[error("{what}: {source}")]
    Output {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

const USAGE: &str = "usage:
  containerd-shim-kata-v2 check [--json] [--boot] [--config FILE]
  containerd-shim-kata-v2 env [--json] [--config FILE]
  containerd-shim-kata-v2 console SANDBOX-ID [COMMAND...]
  containerd-shim-kata-v2 metrics [SANDBOX-ID]";

#[derive(Debug, Default)]
struct Opts {
    json: bool,
    boot: bool,
    config: Option<PathBuf>,
    positional: Vec<String>,
}

fn parse(args: &[String]) -> Result<Opts, OpsError> {
    let mut o = Opts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if !o.positional.is_empty() {
            // After the sandbox id everything is the console's command.
            o.positional.push(a.clone());
            continue;
        }
        match a.as_str() {
            "--json" => o.json = true,
            "--boot" => o.boot = true,
            "--config" => {
                let v = it
                    .next()
                    .ok_or_else(|| OpsError::Usage(format!("--config needs a file\n{USAGE}")))?;
                o.config = Some(PathBuf::from(v));
            }
            "-h" | "--help" => return Err(OpsError::Usage(USAGE.into())),
            s if s.starts_with('-') => {
                return Err(OpsError::Usage(format!("unknown option {s}\n{USAGE}")))
            }
            _ => o.positional.push(a.clone()),
        }
    }
    Ok(o)
}

fn config_path(o: &Opts) -> Result<PathBuf, crate::error::Error> {
    match &o.config {
        Some(p) => Ok(p.clone()),
        None => config::locate(None),
    }
}

/// Runs `command` with `args`; returns the process exit code.
pub fn main(command: &str, args: &[String]) -> Result<i32, OpsError> {
    let o = parse(args)?;
    match command {
        "check" => run_check(&o),
        "env" => run_env(&o),
        "console" => super::console::main(&o.positional, o.config.as_deref()),
        "metrics" => run_metrics(&o),
        other => Err(OpsError::Usage(format!("unknown command {other}\n{USAGE}"))),
    }
}

fn run_check(o: &Opts) -> Result<i32, OpsError> {
    if !o.positional.is_empty() {
        return Err(OpsError::Usage(USAGE.into()));
    }
    let path = config_path(o);
    let loaded = path
        .as_ref()
        .map_err(|e| e.to_string())
        .and_then(|p| config::load(p).map_err(|e| e.to_string()));
    let mut report = Report::new(
        path.ok(),
        check::run(&RealHost, loaded.as_ref().map_err(Clone::clone)),
    );
    if o.boot {
        match (&loaded, report.can_run_pods) {
            (Ok(cfg), true) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let id = format!("kata-shim-check-{}", std::process::id());
                let (finding, secs) = rt.block_on(super::check_boot::boot(
                    cfg,
                    std::path::Path::new(crate::persist::RUN_ROOT),
                    &id,
                ));
                report.boot_sandbox = Some(id);
                report.findings.push(finding);
                report.boot_seconds = secs;
                report.settle();
            }
            _ => report.findings.push(check::Finding {
                check: "boot",
                verdict: check::Verdict::Fail,
                detail: "not attempted: fix the failures above first".into(),
            }),
        }
        report.settle();
    }
    if o.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| OpsError::Output {
            what: "encoding JSON",
            source: e.into(),
        })?;
        println!("{text}");
    } else {
        print!("{}", report.human());
    }
    Ok(report.exit_code())
}

fn run_env(o: &Opts) -> Result<i32, OpsError> {
    if !o.positional.is_empty() {
        return Err(OpsError::Usage(USAGE.into()));
    }
    let path = config_path(o)?;
    let cfg = config::load(&path)?;
    let drop_ins = config::dropins::list(&path)?;
    let env = super::env::resolve(&cfg, &path, drop_ins, &hypervisor::HostProbe::default());
    let text = if o.json {
        env.to_json().map_err(|e| OpsError::Output {
            what: "encoding JSON",
            source: e.into(),
        })?
    } else {
        env.to_toml().map_err(|e| OpsError::Output {
            what: "encoding TOML",
            source: e.into(),
        })?
    };
    println!("{}", text.trim_end());
    Ok(0)
}

/// Prometheus text of one sandbox, or of every sandbox on the node.
fn run_metrics(o: &Opts) -> Result<i32, OpsError> {
    let root = std::path::Path::new(crate::persist::RUN_ROOT);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match o.positional.as_slice() {
        [] => {
            let (text, failed) = rt.block_on(crate::metrics::gather::all(root));
            print!("{text}");
            for f in &failed {
                eprintln!("no metrics from {f}");
            }
            Ok(0)
        }
        [id] => {
            let socket = crate::persist::SandboxPaths::new(root, id)
                .base
                .join(crate::metrics::SOCKET);
            let text = rt
                .block_on(crate::metrics::server::fetch(&socket))
                .map_err(|e| {
                    OpsError::Usage(format!(
                        "sandbox {id:?}: no metrics at {} ({e})",
                        socket.display()
                    ))
                })?;
            print!("{text}");
            Ok(0)
        }
        _ => Err(OpsError::Usage(USAGE.into())),
    }
}
