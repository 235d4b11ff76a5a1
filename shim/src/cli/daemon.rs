//! The long-lived daemon: serves the Task API for one sandbox until it is
//! deleted and containerd says Shutdown.

use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::flags::Flags;
use anyhow::Context;
use protocols::containerd::sandbox_async::create_sandbox;
use protocols::containerd::shim_async::create_task;
use protocols::containerd::ttrpc::r#async::transport::Listener;
use protocols::containerd::ttrpc::r#async::Server;

use super::start::LISTENER_FD;
use crate::events::Containerd;
use crate::persist::RUN_ROOT;
use crate::sandbox::VsockDialer;
use crate::service::TaskService;

/// containerd's name for the task service; v2 and v3 carry the same messages.
const TASK_V2: &str = "containerd.task.v2.Task";
const TASK_V3: &str = "containerd.task.v3.Task";

/// Logs go to the bundle's `log` fifo, which containerd copies into its own
/// log. Opened non-blocking: a slow reader drops lines instead of stalling
/// the runtime.
fn init_logging(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::new(format!("{level},ttrpc=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
    {
        Ok(f) => builder.with_writer(std::sync::Mutex::new(f)).init(),
        Err(_) => builder.with_writer(std::io::sink).init(),
    }
}

/// One malloc arena and fixed thresholds: each runtime thread would get an
/// arena of its own whose freed pages stay resident, and glibc's dynamic
/// mmap threshold keeps once-used large buffers on the heap. A per-pod
/// daemon's footprint matters more than allocator contention.
fn tune_malloc() {
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
    }
}

pub fn run(flags: Flags) -> anyhow::Result<()> {
    tune_malloc();
    init_logging(flags.debug);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building runtime")?;
    let result = rt.block_on(serve(flags));
    if let Err(e) = &result {
        tracing::error!(error = %e, "daemon failed");
    }
    // Background tasks (stdio copies of abandoned processes) must not keep
    // the process alive.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

async fn serve(flags: Flags) -> anyhow::Result<()> {
    let ttrpc_address = std::env::var("TTRPC_ADDRESS").context("TTRPC_ADDRESS not set")?;
    let events = Arc::new(Containerd::connect(&ttrpc_address, &flags.namespace));
    let service = TaskService::new(
        &flags.namespace,
        PathBuf::from(RUN_ROOT),
        Arc::new(hypervisor::Qemu::default()),
        Arc::new(VsockDialer),
        events,
        Arc::new(crate::share::HostMounter),
    );
    // Without readable cgroup mounts the VM stays in containerd's cgroup.
    let service = Arc::new(match crate::host_cgroup::Host::discover() {
        Ok(host) => service.with_host_cgroups(host),
        Err(e) => {
            tracing::warn!("host cgroups unknown, VMs stay in the shim's cgroup: {e}");
            service
        }
    });
    let exit = service.exit.clone();

    crate::service::idle::exit_when_idle(service.clone(), crate::service::idle::IDLE_EXIT);

    let mut services = create_task(service.clone());
    // The Sandbox API next to the Task API: containerd 2.x with
    // `sandboxer = "shim"` creates the pod through it.
    services.extend(create_sandbox(service.clone()));
    let mut v2 = create_task(service.clone());
    if let Some(s) = v2.remove(TASK_V3) {
        services.insert(TASK_V2.to_owned(), s);
    }
    // `start` passed the listener without close-on-exec; set it again so
    // QEMU, its helpers and `ip`/`tc` never inherit containerd's Task API.
    // SAFETY: fcntl on a descriptor number has no memory-safety
    // preconditions; failure is reported.
    if unsafe { libc::fcntl(LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("listener close-on-exec");
    }
    // SAFETY: `start` handed this process the bound listener at LISTENER_FD
    // and nothing else owns that descriptor.
    let std_listener = unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD) };
    let listener = Listener::try_from(std_listener).context("listener")?;
    let mut server = Server::new()
        .add_listener(listener)
        .register_service(services);
    server.start().await.context("starting ttrpc server")?;
    tracing::info!(sandbox = %flags.id, "shim serving on {}", flags.socket);

    exit.notified().await;
    tracing::info!(sandbox = %flags.id, "shutting down");
    let _ = server.shutdown().await;
    let path = flags.socket.trim_start_matches("unix://");
    let _ = std::fs::remove_file(path);
    Ok(())
}
