//! OCI hooks from the spec, run on the host.
//!
//! The container runs in a VM, so the host-side hooks run here, as Kata's
//! runtime does: `prestart`, `createRuntime` and `createContainer` before
//! the container is created (before the VM boots, for the pod's first
//! container, so a hook that fills the network namespace — nerdctl's,
//! Docker's — does so before the VM's NIC is set up), `poststart` after
//! Start and `poststop` after Delete. `startContainer` hooks belong in the
//! container, which is in the guest: not run (logged).
//!
//! Each hook gets the OCI state on stdin and is killed at its timeout. A
//! failing create-time hook fails Create; `poststart`/`poststop` failures
//! are logged and the rest go on, as the runtime spec says.
//!
//! Where the spec names a network namespace, the create-time hooks and
//! `poststop` run in it: a dedicated thread enters it and spawns them, and
//! the state's `pid` is that thread's id, so `/proc/<pid>/ns/net` names the
//! pod's namespace (what Docker's libnetwork hook looks up), as Kata does.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{self as oci, Hook};
use serde::Serialize;

use crate::error::{Error, Result};

/// When a set of hooks runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Prestart,
    CreateRuntime,
    CreateContainer,
    Poststart,
    Poststop,
}

impl Phase {
    /// The create-time phases, in the order runc runs them.
    pub const CREATE: [Phase; 3] = [
        Phase::Prestart,
        Phase::CreateRuntime,
        Phase::CreateContainer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Prestart => "prestart",
            Phase::CreateRuntime => "createRuntime",
            Phase::CreateContainer => "createContainer",
            Phase::Poststart => "poststart",
            Phase::Poststop => "poststop",
        }
    }

    /// The container's status in the state the hook reads.
    fn status(self) -> &'static str {
        match self {
            Phase::Prestart | Phase::CreateRuntime | Phase::CreateContainer => "creating",
            Phase::Poststart => "running",
            Phase::Poststop => "stopped",
        }
    }

    fn in_netns(self) -> bool {
        self != Phase::Poststart
    }

    /// A failure fails the operation (else it is only logged).
    fn fatal(self) -> bool {
        !matches!(self, Phase::Poststart | Phase::Poststop)
    }

    #[allow(deprecated)] // prestart: deprecated in the spec, still run (runc does)
    fn hooks(self, hooks: &oci::Hooks) -> &[Hook] {
        let list = match self {
            Phase::Prestart => hooks.prestart(),
            Phase::CreateRuntime => hooks.create_runtime(),
            Phase::CreateContainer => hooks.create_container(),
            Phase::Poststart => hooks.poststart(),
            Phase::Poststop => hooks.poststop(),
        };
        list.as_deref().unwrap_or_default()
    }
}

/// The OCI runtime state, as hooks read it on stdin.
#[derive(Debug, Serialize)]
struct State<'a> {
    #[serde(rename = "ociVersion")]
    oci_version: &'a str,
    id: &'a str,
    status: &'static str,
    pid: u32,
    bundle: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    annotations: Option<&'a std::collections::HashMap<String, String>>,
}

/// What the hooks of one operation need to know.
pub struct Context<'a> {
    pub spec: &'a oci::Spec,
    pub id: &'a str,
    pub bundle: &'a str,
    /// The task's pid (reported when the hook does not run in a netns).
    pub pid: u32,
}

/// The spec has hooks of `phase`.
pub fn any(spec: &oci::Spec, phases: &[Phase]) -> bool {
    spec.hooks()
        .as_ref()
        .is_some_and(|h| phases.iter().any(|p| !p.hooks(h).is_empty()))
}

/// Runs the hooks of `phases`, in order, on a dedicated thread (it may
/// enter the pod's network namespace and blocks waiting for the hooks).
pub async fn run(ctx: &Context<'_>, phases: &[Phase]) -> Result<()> {
    let Some(hooks) = ctx.spec.hooks().as_ref() else {
        return Ok(());
    };
    if hooks
        .start_container()
        .as_ref()
        .is_some_and(|h| !h.is_empty())
    {
        tracing::warn!(
            container = ctx.id,
            "startContainer hooks belong in the guest: not run"
        );
    }
    let mut jobs = Vec::new();
    for &phase in phases {
        for hook in phase.hooks(hooks) {
            if let Some(t) = hook.timeout().filter(|t| *t <= 0) {
                return Err(Error::InvalidArgument(format!(
                    "{} hook {}: timeout {t} is not positive",
                    phase.name(),
                    hook.path().display()
                )));
            }
            jobs.push((phase, hook.clone()));
        }
    }
    if jobs.is_empty() {
        return Ok(());
    }
    let netns = crate::network::netns_path(ctx.spec);
    let job = Job {
        jobs,
        netns,
        oci_version: ctx.spec.version().clone(),
        id: ctx.id.to_owned(),
        bundle: ctx.bundle.to_owned(),
        pid: ctx.pid,
        annotations: ctx.spec.annotations().clone(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("oci-hooks".into())
        .spawn(move || {
            let _ = tx.send(job.run());
        })
        .map_err(|e| Error::io("starting the hook thread", e))?;
    rx.await
        .map_err(|_| Error::Hook("the hook thread ended without an answer".into()))?
}

struct Job {
    jobs: Vec<(Phase, Hook)>,
    netns: Option<PathBuf>,
    oci_version: String,
    id: String,
    bundle: String,
    pid: u32,
    annotations: Option<std::collections::HashMap<String, String>>,
}

impl Job {
    /// On its own thread: the network namespace it enters is this thread's
    /// alone and goes with it.
    fn run(self) -> Result<()> {
        let mut entered = false;
        for (phase, hook) in &self.jobs {
            if phase.in_netns() && !entered {
                if let Some(ns) = &self.netns {
                    enter_netns(ns)?;
                    entered = true;
                }
            }
            let pid = if entered && phase.in_netns() {
                // SAFETY: gettid has no preconditions.
                unsafe { libc::gettid() as u32 }
            } else {
                self.pid
            };
            let state = State {
                oci_version: &self.oci_version,
                id: &self.id,
                status: phase.status(),
                pid,
                bundle: &self.bundle,
                annotations: self.annotations.as_ref(),
            };
            let state = serde_json::to_vec(&state)
                .map_err(|e| Error::Hook(format!("encoding the state: {e}")))?;
            let t0 = Instant::now();
            match run_one(hook, &state) {
                Ok(()) => tracing::info!(container = %self.id, hook = %hook.path().display(),
                    phase = phase.name(), elapsed = ?t0.elapsed(), "hook ran"),
                Err(e) if phase.fatal() => {
                    return Err(Error::Hook(format!("{} hook {e}", phase.name())))
                }
                Err(e) => tracing::warn!(container = %self.id, phase = phase.name(),
                    "{} hook {e}; going on", phase.name()),
            }
        }
        Ok(())
    }
}

fn enter_netns(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("opening network namespace {}", path.display()), e))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
        Error::Hook(format!(
            "entering network namespace {}: {e}",
            path.display()
        ))
    })
}

/// Most of a hook's output kept for the error message.
const OUTPUT_KEPT: usize = 4096;
/// How often a running hook is looked at.
const POLL: Duration = Duration::from_millis(5);

/// Runs one hook to its end (or its timeout); the error names the hook.
fn run_one(hook: &Hook, state: &[u8]) -> std::result::Result<(), String> {
    let path = hook.path();
    let name = path.display();
    let mut cmd = Command::new(path);
    // args[0] is the program's name, as in execve.
    if let Some((first, rest)) = hook.args().as_deref().unwrap_or_default().split_first() {
        cmd.arg0(first).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().as_deref().unwrap_or_default() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("{name}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state closes the pipe: not an error.
        let _ = stdin.write_all(state);
    }
    let out = collect(child.stdout.take());
    let err = collect(child.stderr.take());
    let deadline = hook
        .timeout()
        .map(|t| Instant::now() + Duration::from_secs(t.unsigned_abs()));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => return Err(format!("{name}: waiting: {e}")),
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{name} did not finish within its timeout of {} s",
                hook.timeout().unwrap_or_default()
            ));
        }
        std::thread::sleep(POLL);
    };
    if status.success() {
        return Ok(());
    }
    // Output is read only up to a moment after the exit: a child the hook
    // left behind may hold the pipes.
    let text = |rx: std::sync::mpsc::Receiver<Vec<u8>>| {
        rx.recv_timeout(Duration::from_millis(200))
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default()
    };
    let output = [text(err), text(out)]
        .into_iter()
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    Err(format!("{name} failed ({status}): {output}"))
}

/// Reads a pipe to its end on a thread; sends what it kept.
fn collect(pipe: Option<impl Read + Send + 'static>) -> std::sync::mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut p) = pipe {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = p.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let room = OUTPUT_KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            let _ = tx.send(kept);
        });
    }
    rx
}

#[cfg(test)]
#[path = "hooks_tests.rs"]
mod tests;
