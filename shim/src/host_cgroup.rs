//! Host cgroup placement: the pod's VM (QEMU, virtiofsd, vhost-device-vsock)
//! and the shim daemon's own work for it are accounted in the pod's cgroup on
//! the host, as Kata's `sandbox_cgroup_only = true` does. Then the pod's
//! limits (which kubelet sets on the pod cgroup, RuntimeClass overhead
//! included) bound the VM, and a busy vCPU is throttled by the pod's CPU
//! limit instead of taking a host core from other pods.
//!
//! The daemon serves one pod, so it moves *itself* into the sandbox's cgroup
//! before it launches the VM: every helper it starts inherits the cgroup, and
//! nothing has to be moved after the fact (no window where QEMU runs outside).
//! At teardown it moves back where containerd started it and removes the
//! directories it created (recorded in the sandbox's state file too, so
//! `delete` removes them after a crash).
//!
//! The cgroup comes from the sandbox container's `linux.cgroupsPath`: a plain
//! path (cgroupfs driver) or systemd's `slice:prefix:name` (containerd's CRI
//! uses that form when the pod's cgroup parent is a `.slice`), which names
//! `/<slice hierarchy>/<prefix>-<name>.scope`. Every mounted hierarchy is
//! used: cgroup v2, v1 controllers, and hybrid hosts with both.

use std::fs;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a sandbox's VM is placed when `sandbox_cgroup_only` is false: an
/// overhead cgroup of its own, outside the pod's (Kata's name).
pub const OVERHEAD_PARENT: &str = "kata_overhead";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath {0:?} is not a valid cgroup path")]
    InvalidPath(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup hierarchy is mounted")]
    NoHierarchy,
}

pub type Result<T> = std::result::Result<T, CgroupError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mount: PathBuf,
    /// v1: its controllers as `/proc/<pid>/cgroup` names them
    /// (`cpu,cpuacct`, `name=systemd`); v2: empty.
    pub key: String,
}

impl Hierarchy {
    fn is_v2(&self) -> bool {
        self.key.is_empty()
    }
}

/// The cgroup hierarchies of `/proc/self/mountinfo`'s text.
pub fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    for line in text.lines() {
        // "id parent maj:min root mount opts [optional...] - fstype source superopts"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut r = right.split_whitespace();
        let (Some(fstype), Some(_source), super_opts) = (r.next(), r.next(), r.next()) else {
            continue;
        };
        let Some(mount) = left.split_whitespace().nth(4) else {
            continue;
        };
        let mount = PathBuf::from(unescape(mount));
        match fstype {
            "cgroup2" => out.push(Hierarchy {
                mount,
                key: String::new(),
            }),
            "cgroup" => {
                let mut names: Vec<&str> = super_opts
                    .unwrap_or_default()
                    .split(',')
                    .filter(|o| !KERNEL_OPTS.contains(o) && !o.starts_with("release_agent="))
                    .collect();
                // /proc/<pid>/cgroup lists a named hierarchy's name after
                // its controllers; the controllers in the kernel's order.
                names.sort_by_key(|n| n.starts_with("name="));
                if !names.is_empty() {
                    out.push(Hierarchy {
                        mount,
                        key: names.join(","),
                    });
                }
            }
            _ => {}
        }
    }
    out
}

/// Mount options of cgroup v1 that are not controllers.
const KERNEL_OPTS: &[&str] = &[
    "rw",
    "ro",
    "noprefix",
    "clone_children",
    "xattr",
    "cpuset_v2_mode",
];

/// mountinfo escapes blanks and backslashes as octal.
fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// `/proc/<pid>/cgroup`'s text: (hierarchy key, path) pairs.
pub fn parse_proc_cgroup(text: &str) -> Vec<(String, PathBuf)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_id, key, path) = (parts.next()?, parts.next()?, parts.next()?);
            Some((key.to_owned(), PathBuf::from(path)))
        })
        .collect()
}

/// The cgroup a `linux.cgroupsPath` names, relative to each hierarchy's root.
pub fn resolve(cgroups_path: &str) -> Result<PathBuf> {
    let bad = || CgroupError::InvalidPath(cgroups_path.to_owned());
    let rel = match systemd_parts(cgroups_path) {
        Some((slice, prefix, name)) => {
            let mut p = expand_slice(slice).ok_or_else(bad)?;
            let unit = if name.ends_with(".slice") {
                name.to_owned()
            } else if prefix.is_empty() {
                format!("{name}.scope")
            } else {
                format!("{prefix}-{name}.scope")
            };
            p.push(unit);
            p
        }
        // A colon outside systemd's form is a mistake, not a directory name.
        None if cgroups_path.contains(':') => return Err(bad()),
        None => PathBuf::from(cgroups_path.trim_start_matches('/')),
    };
    let clean = rel.components().all(|c| matches!(c, Component::Normal(_)));
    if rel.as_os_str().is_empty() || !clean {
        return Err(bad());
    }
    Ok(rel)
}

/// `slice:prefix:name` when the path has systemd's form.
fn systemd_parts(p: &str) -> Option<(&str, &str, &str)> {
    if p.starts_with('/') {
        return None;
    }
    let mut it = p.split(':');
    let parts = (it.next()?, it.next()?, it.next()?);
    (it.next().is_none() && !parts.2.is_empty() && !parts.2.contains('/')).then_some(parts)
}

/// `a-b-c.slice` → `a.slice/a-b.slice/a-b-c.slice` (systemd's slice nesting);
/// `` and `-.slice` are the root.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    if slice.is_empty() || slice == "-.slice" {
        return Some(PathBuf::new());
    }
    let stem = slice.strip_suffix(".slice")?;
    if stem.is_empty()
        || stem.contains('/')
        || stem.starts_with('-')
        || stem.ends_with('-')
        || stem.contains("--")
    {
        return None;
    }
    let mut path = PathBuf::new();
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    Some(path)
}

/// Where the daemon was before it entered the sandbox's cgroup, and what it
/// created there; [`Placement::leave`] undoes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Directories created, parents first.
    pub created: Vec<PathBuf>,
    /// The daemon's cgroup directory in each hierarchy before.
    #[serde(skip)]
    previous: Vec<PathBuf>,
}

/// Moves the daemon (every thread) into cgroup `rel` of every hierarchy,
/// creating it. On failure nothing is left: the daemon is back and the
/// directories created are gone.
pub fn enter(
    hierarchies: &[Hierarchy],
    own: &[(String, PathBuf)],
    rel: &Path,
) -> Result<Placement> {
    if hierarchies.is_empty() {
        return Err(CgroupError::NoHierarchy);
    }
    let mut placement = Placement::default();
    let pid = std::process::id().to_string();
    for h in hierarchies {
        let before = own
            .iter()
            .find(|(k, _)| *k == h.key)
            .map(|(_, p)| h.mount.join(p.strip_prefix("/").unwrap_or(p)))
            .unwrap_or_else(|| h.mount.clone());
        let target = h.mount.join(rel);
        let step = create_dirs(h, rel, &mut placement.created).and_then(|()| {
            let procs = target.join("cgroup.procs");
            fs::write(&procs, &pid).map_err(io("moving the shim into", &procs))
        });
        if let Err(e) = step {
            placement.leave();
            return Err(e);
        }
        placement.previous.push(before);
    }
    Ok(placement)
}

/// Creates `rel` under `h`'s mount, recording each directory made. Another
/// sandbox's teardown may remove a shared parent (`/default` of `ctr run`)
/// between two of our mkdirs: then the walk starts again.
fn create_dirs(h: &Hierarchy, rel: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    for _ in 0..5 {
        if create_dirs_once(h, rel, created)? {
            return Ok(());
        }
    }
    Err(CgroupError::Io {
        what: "creating cgroup (its parent keeps vanishing)",
        path: h.mount.join(rel),
        source: ErrorKind::NotFound.into(),
    })
}

/// `false`: a parent vanished under us.
fn create_dirs_once(h: &Hierarchy, rel: &Path, created: &mut Vec<PathBuf>) -> Result<bool> {
    let mut dir = h.mount.clone();
    for comp in rel.components() {
        if h.is_v2() {
            enable_controllers(&dir);
        }
        let parent = dir.clone();
        dir.push(comp);
        match fs::create_dir(&dir) {
            Ok(()) => {
                created.push(dir.clone());
                if h.key.split(',').any(|c| c == "cpuset") {
                    inherit_cpuset(&parent, &dir)?;
                }
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io("creating cgroup", &dir)(e)),
        }
    }
    Ok(true)
}

/// cgroup v2: the parent's controllers available to its children (best
/// effort: on a hybrid host the v2 tree has none, and one a parent cannot
/// give is skipped).
fn enable_controllers(dir: &Path) {
    let Ok(available) = fs::read_to_string(dir.join("cgroup.controllers")) else {
        return;
    };
    for c in available.split_whitespace() {
        if ["cpu", "memory", "pids", "io", "cpuset"].contains(&c) {
            let _ = fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
}

/// cgroup v1's cpuset starts empty: a task cannot join until it has CPUs and
/// memory nodes, so a new one takes its parent's.
fn inherit_cpuset(parent: &Path, dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let own = dir.join(file);
        if fs::read_to_string(&own).is_ok_and(|v| !v.trim().is_empty()) {
            continue;
        }
        let from = parent.join(file);
        let value = fs::read_to_string(&from).map_err(io("reading", &from))?;
        fs::write(&own, value.trim()).map_err(io("writing", &own))?;
    }
    Ok(())
}

impl Placement {
    /// Moves the daemon back and removes the directories it created (after
    /// the VM and its helpers are gone; a directory that still has tasks is
    /// retried briefly, then left with a warning).
    pub fn leave(&self) {
        let pid = std::process::id().to_string();
        for dir in &self.previous {
            let procs = dir.join("cgroup.procs");
            if let Err(e) = fs::write(&procs, &pid) {
                tracing::warn!("moving the shim back to {}: {e}", procs.display());
            }
        }
        remove_dirs(&self.created);
    }
}

/// Removes cgroup directories, deepest first; what is already gone is fine.
/// Only a sandbox's own cgroup (a leaf: no other cgroup under it) is
/// retried while its last tasks leave; a parent we created is removed only
/// if no other sandbox uses it by then.
pub fn remove_dirs(created: &[PathBuf]) {
    let leaves: Vec<&PathBuf> = created
        .iter()
        .filter(|d| !created.iter().any(|o| o != *d && o.starts_with(d)))
        .collect();
    for dir in created.iter().rev() {
        let tries = if leaves.contains(&dir) { 20 } else { 1 };
        for attempt in 1.. {
            match fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::NotFound => break,
                Err(_) if attempt < tries => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    if tries > 1 {
                        tracing::warn!("removing cgroup {}: {e}", dir.display());
                    }
                    break;
                }
            }
        }
    }
}

/// The cgroup the sandbox's VM goes to: the sandbox container's own, or the
/// overhead cgroup when `sandbox_cgroup_only` is off.
pub fn target(
    sandbox_cgroup_only: bool,
    cgroups_path: Option<&str>,
    sandbox_id: &str,
) -> Result<Option<PathBuf>> {
    if !sandbox_cgroup_only {
        return resolve(&format!("/{OVERHEAD_PARENT}/{sandbox_id}")).map(Some);
    }
    match cgroups_path.filter(|p| !p.is_empty()) {
        Some(p) => resolve(p).map(Some),
        None => Ok(None),
    }
}

/// The host's hierarchies and the daemon's place in them, read once.
#[derive(Debug, Clone)]
pub struct Host {
    pub hierarchies: Vec<Hierarchy>,
    pub own: Vec<(String, PathBuf)>,
}

impl Host {
    pub fn discover() -> Result<Host> {
        let mi = Path::new("/proc/self/mountinfo");
        let pc = Path::new("/proc/self/cgroup");
        let hierarchies = parse_mountinfo(&fs::read_to_string(mi).map_err(io("reading", mi))?);
        let own = parse_proc_cgroup(&fs::read_to_string(pc).map_err(io("reading", pc))?);
        Ok(Host { hierarchies, own })
    }

    pub fn enter(&self, rel: &Path) -> Result<Placement> {
        enter(&self.hierarchies, &self.own, rel)
    }
}

#[cfg(test)]
#[path = "host_cgroup_tests.rs"]
mod tests;
