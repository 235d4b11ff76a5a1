//! Which containerd the tests run against: Debian's 1.6 (on PATH) or the
//! static 2.3.4 build in `../shared/tools/containerd-2.3.4/` next to the
//! repository. Each release has its own binaries (`containerd`, `ctr`) and
//! its own configuration format (`version = 2` vs `version = 3`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// A containerd release line the harness knows how to configure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Release {
    /// Debian 12's containerd 1.6 (`containerd` and `ctr` on PATH).
    V1_6,
    /// containerd 2.3.4 from the workspace's shared tools.
    V2_3,
}

/// Overrides where containerd 2.3's binaries are (a directory holding
/// `containerd` and `ctr`).
pub const CONTAINERD2_DIR_ENV: &str = "KATA_TEST_CONTAINERD2_DIR";

impl Release {
    pub fn name(self) -> &'static str {
        match self {
            Release::V1_6 => "containerd 1.6",
            Release::V2_3 => "containerd 2.3.4",
        }
    }

    /// containerd 2.x reads configuration `version = 3` and names its CRI
    /// plugins `io.containerd.cri.v1.*`.
    pub fn is_v2(self) -> bool {
        self == Release::V2_3
    }
}

/// A containerd release and where its binaries are.
#[derive(Clone, Debug)]
pub struct Dist {
    pub release: Release,
    /// Directory of `containerd` and `ctr`; `None`: found on PATH.
    pub bin_dir: Option<PathBuf>,
}

impl Dist {
    /// Debian's containerd on PATH.
    pub fn system() -> Self {
        Dist {
            release: Release::V1_6,
            bin_dir: None,
        }
    }

    /// containerd 2.3.4's binaries in `dir`.
    pub fn in_dir(release: Release, dir: &Path) -> Self {
        Dist {
            release,
            bin_dir: Some(dir.to_path_buf()),
        }
    }

    pub fn containerd(&self) -> PathBuf {
        self.binary("containerd")
    }

    pub fn ctr(&self) -> PathBuf {
        self.binary("ctr")
    }

    fn binary(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.join(name),
            None => PathBuf::from(name),
        }
    }

    /// The distribution of `release` for this run, or `None` with a message
    /// on stderr when it is not installed here. Under CI (`CI=true`) a
    /// missing containerd 2.3 is an error: CI must test both.
    pub fn find(release: Release) -> Result<Option<Dist>> {
        match release {
            Release::V1_6 => Ok(Some(Dist::system())),
            Release::V2_3 => {
                let dir = std::env::var_os(CONTAINERD2_DIR_ENV)
                    .map(PathBuf::from)
                    .unwrap_or_else(default_containerd2_dir);
                let found = dir.join("containerd").is_file() && dir.join("ctr").is_file();
                match (found, in_ci()) {
                    (true, _) => Ok(Some(Dist::in_dir(release, &dir))),
                    (false, true) => bail!(
                        "CI=true but containerd 2.3.4 is missing from {} (set {CONTAINERD2_DIR_ENV})",
                        dir.display()
                    ),
                    (false, false) => {
                        eprintln!(
                            "containerd 2.3.4 not found in {} ({CONTAINERD2_DIR_ENV} unset): \
                             this test runs on containerd 1.6 only",
                            dir.display()
                        );
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// `../shared/tools/containerd-2.3.4` relative to the repository.
pub fn default_containerd2_dir() -> PathBuf {
    crate::repo_root().join("../shared/tools/containerd-2.3.4")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Generates one test per containerd release from an async test body
/// `async fn body(dist: Dist) -> Result<()>`: `mod <body> { containerd_1_6,
/// containerd_2_3 }`. A release that is not installed passes with a
/// message (fails under CI, see [`Dist::find`]).
#[macro_export]
macro_rules! on_both_containerds {
    // A blocking body `fn body(dist: Dist) -> Result<()>`.
    (sync $body:ident) => {
        mod $body {
            #[test]
            fn containerd_1_6() -> anyhow::Result<()> {
                $crate::dist::run_blocking_on($crate::dist::Release::V1_6, super::$body)
            }
            #[test]
            fn containerd_2_3() -> anyhow::Result<()> {
                $crate::dist::run_blocking_on($crate::dist::Release::V2_3, super::$body)
            }
        }
    };
    ($body:ident) => {
        mod $body {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd_1_6() -> anyhow::Result<()> {
                $crate::dist::run_on($crate::dist::Release::V1_6, super::$body).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd_2_3() -> anyhow::Result<()> {
                $crate::dist::run_on($crate::dist::Release::V2_3, super::$body).await
            }
        }
    };
}

/// Like [`on_both_containerds`] for one release only.
#[macro_export]
macro_rules! on_containerd {
    ($release:ident, $test:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() -> anyhow::Result<()> {
            $crate::dist::run_on($crate::dist::Release::$release, $body).await
        }
    };
}

/// Runs `body` on `release` if it is installed (see [`Dist::find`]).
pub async fn run_on<F, Fut>(release: Release, body: F) -> Result<()>
where
    F: FnOnce(Dist) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    match Dist::find(release)? {
        Some(d) => {
            eprintln!("running on {}", release.name());
            body(d).await
        }
        None => Ok(()),
    }
}

/// Runs the blocking `body` on `release` if it is installed.
pub fn run_blocking_on(release: Release, body: impl FnOnce(Dist) -> Result<()>) -> Result<()> {
    match Dist::find(release)? {
        Some(d) => {
            eprintln!("running on {}", release.name());
            body(d)
        }
        None => Ok(()),
    }
}
