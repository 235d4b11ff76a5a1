//! `kata-agent`: the guest agent, PID 1 of the sandbox VM. Serves the kata
//! agent API (ttrpc over vsock port 1024) and runs containers.
//!
//! Also runs outside a VM for development: not being PID 1, it skips the
//! system setup and power-off, and `KATA_AGENT_SERVER_ADDR` may name another
//! address (e.g. `unix:///tmp/agent.sock`).
mod blocking;
mod cgroups;
mod container;
mod debug_console;
mod error;
mod init;
mod logsink;
mod mounts;
mod network;
mod pidns;
mod port_forward;
mod process;
mod reaper;
mod runtime;
mod sandbox;
mod server;
mod spawn;
mod sync;
mod system;

use std::sync::Arc;
use std::time::Duration;

use tracing_subscriber::EnvFilter;

const DEFAULT_ADDR: &str = "vsock://-1:1024";
const BIND_ATTEMPTS: u32 = 500;
/// How long an idle blocking thread waits for more work before it exits.
const BLOCKING_KEEP_ALIVE: Duration = Duration::from_secs(600);

/// Stdout answers allocate up to 1 MiB twice per ReadStdout (the data, its
/// encoding). With glibc's adaptive defaults those come from mmap or from a
/// heap top trimmed after every answer, so each one faults its pages in
/// again, and page faults are slow under TCG. Fixed thresholds keep them
/// on the heap and keep up to 4 MiB of freed heap for the next answer (a cost
/// paid only by a guest that streamed; idle guests never grow that far).
fn keep_stream_buffers() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 4 << 20);
    }
}

fn main() {
    match std::env::args().nth(1).as_deref() {
        Some(runtime::HELPER_ARG) => runtime::helper_main(),
        Some(pidns::HOLDER_ARG) => pidns::holder_main(),
        _ => {}
    }
    keep_stream_buffers();
    let pid1 = std::process::id() == 1;
    let problems = if pid1 {
        init::early_setup()
    } else {
        Vec::new()
    };
    let cmdline = kernel_cmdline(pid1);
    let filter = EnvFilter::try_from_env("KATA_AGENT_LOG")
        .unwrap_or_else(|_| EnvFilter::new(cmdline_log_level(&cmdline)));
    let writer = logsink::Tee {
        vsock: logsink::vport_of(&cmdline).map(logsink::VsockLog::start),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .with_timer(KernelUptime)
        .init();
    for p in problems {
        tracing::warn!("early setup: {p}");
    }
    tracing::info!(version = server::AGENT_VERSION, pid1, "kata-agent starting");
    if pid1 {
        init::load_modules();
        init::loopback_up();
        init::tune_page_reporting(&cmdline);
        if let Some(port) = debug_console::vport_of(&cmdline) {
            debug_console::start(port);
        }
    } else {
        // Not our system to set up: nothing to wait for before mounting.
        init::late_modules_done();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Blocking threads (every container and exec spawn runs on one)
        // stay for the next request: starting one under TCG took ~14 ms.
        .thread_keep_alive(BLOCKING_KEEP_ALIVE)
        .enable_all()
        .build();
    match rt {
        Ok(rt) => {
            if let Err(e) = rt.block_on(serve(pid1)) {
                tracing::error!(error = %e, "agent failed");
            }
        }
        Err(e) => tracing::error!(error = %e, "building the tokio runtime"),
    }
    if pid1 {
        // PID 1 must not exit (kernel panic); without the agent the VM is useless.
        init::power_off();
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
    std::process::exit(1);
}

/// The kernel command line (empty outside a VM).
fn kernel_cmdline(pid1: bool) -> String {
    if pid1 {
        std::fs::read_to_string("/proc/cmdline").unwrap_or_default()
    } else {
        String::new()
    }
}

/// `agent.log=<level>` on the kernel command line (upstream's parameter), else "info".
fn cmdline_log_level(cmdline: &str) -> String {
    init::cmdline_param(cmdline, "agent.log")
        .unwrap_or("info")
        .to_string()
}

/// Log timestamps as the kernel's uptime, comparable with its own messages.
struct KernelUptime;

impl tracing_subscriber::fmt::time::FormatTime for KernelUptime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        use nix::time::{clock_gettime, ClockId};
        match clock_gettime(ClockId::CLOCK_BOOTTIME) {
            Ok(t) => write!(w, "[{:5}.{:06}]", t.tv_sec(), t.tv_nsec() / 1000),
            Err(_) => write!(w, "[?]"),
        }
    }
}

async fn serve(pid1: bool) -> Result<(), Box<dyn std::error::Error>> {
    let reaper = reaper::Reaper::start()?;
    let addr = std::env::var("KATA_AGENT_SERVER_ADDR").unwrap_or_else(|_| DEFAULT_ADDR.to_string());
    let sandbox = Arc::new(sandbox::Sandbox::new(reaper));
    let agent = Arc::new(server::Agent {
        sandbox,
        power_off: pid1,
    });
    let mut attempt = 0;
    let server = loop {
        // The vsock transport may still be probing right after module load.
        match ttrpc::r#async::Server::new().bind(&addr) {
            Ok(s) => break s,
            Err(e) if attempt < BIND_ATTEMPTS => {
                attempt += 1;
                tracing::debug!(error = %e, "bind {addr}, retrying");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(format!("bind {addr}: {e}").into()),
        }
    };
    let mut server = server
        .register_service(protocols::agent_ttrpc::create_agent_service(agent))
        .register_service(protocols::health_ttrpc::create_health(Arc::new(
            server::HealthService,
        )));
    server.start().await?;
    if pid1 {
        // CRI PortForward's way into the guest (its host side is the shim's
        // `portforward`); in a VM only, where vsock exists.
        tokio::spawn(port_forward::serve(protocols::PORT_FORWARD_VSOCK_PORT));
    }
    // The shim waits for this line on the console (protocols::AGENT_READY_LINE).
    tracing::info!(%addr, "agent ready");
    // While the host dials: start the blocking thread the first
    // CreateContainer will use (and have TCG translate that path).
    let _ = tokio::task::spawn_blocking(|| ()).await;
    std::future::pending::<()>().await;
    Ok(())
}
