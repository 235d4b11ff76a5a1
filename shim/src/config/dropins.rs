//! `config.d` drop-ins, as Kata reads them: every `*.toml` file in the
//! `config.d` directory next to the main configuration file, in name order
//! (byte order of the file names), each decoded on top of what came before.
//! A key set in a later file wins; tables merge key by key; any other value
//! (strings, numbers, arrays) is replaced as a whole. Files not ending in
//! `.toml`, directories and hidden files are skipped; a missing directory
//! means no drop-ins.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The drop-in directory of a main configuration file.
pub fn dir_of(main: &Path) -> PathBuf {
    main.parent()
        .unwrap_or_else(|| Path::new("."))
        .join("config.d")
}

/// The drop-in files that apply to `main`, in the order they are merged.
pub fn list(main: &Path) -> Result<Vec<PathBuf>> {
    let dir = dir_of(main);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(Error::Config(format!(
                "reading drop-in directory {}: {e}",
                dir.display()
            )))
        }
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| {
            Error::Config(format!("reading drop-in directory {}: {e}", dir.display()))
        })?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // Follows symlinks, as a package manager's alternatives may use them.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Merges `over` into `base`: tables recursively, other values replaced.
pub fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("reading {}: {e}", path.display())))?;
    text.parse::<toml::Table>()
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// The main file with its drop-ins merged, as TOML text, and the drop-ins used.
pub fn merged_text(main: &Path) -> Result<(String, Vec<PathBuf>)> {
    let files = list(main)?;
    if files.is_empty() {
        // No drop-ins: the file's own text, so parse errors keep its line numbers.
        let text = std::fs::read_to_string(main)
            .map_err(|e| Error::Config(format!("reading {}: {e}", main.display())))?;
        return Ok((text, files));
    }
    let mut table = read_table(main)?;
    for f in &files {
        merge(&mut table, read_table(f)?);
    }
    let text = toml::to_string(&table)
        .map_err(|e| Error::Config(format!("merging drop-ins of {}: {e}", main.display())))?;
    Ok((text, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "[hypervisor.qemu]\nkernel = \"/k\"\ninitrd = \"/i\"\ndefault_vcpus = 1\n\
                        default_memory = 256\nenable_annotations = [\"default_vcpus\"]\n\
                        [agent.kata]\ndial_timeout = 60\n";

    fn setup(dropins: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let main = d.path().join("configuration.toml");
        std::fs::write(&main, MAIN).expect("main");
        if !dropins.is_empty() {
            std::fs::create_dir(d.path().join("config.d")).expect("config.d");
        }
        for (name, text) in dropins {
            std::fs::write(d.path().join("config.d").join(name), text).expect("drop-in");
        }
        (d, main)
    }

    #[test]
    fn later_names_win_tables_merge_arrays_replace() {
        let (_d, main) = setup(&[
            // Written in the other order on purpose: names decide, not creation.
            (
                "20-memory.toml",
                "[hypervisor.qemu]\ndefault_memory = 1024\ndefault_vcpus = 2\n",
            ),
            (
                "10-memory.toml",
                "[hypervisor.qemu]\ndefault_memory = 512\nenable_annotations = [\"kernel_params\"]\n",
            ),
            ("30-agent.toml", "[agent.kata]\ndial_timeout = 5\n"),
            ("99-ignored.conf", "[hypervisor.qemu]\ndefault_memory = 4\n"),
            (".hidden.toml", "[hypervisor.qemu]\ndefault_memory = 8\n"),
        ]);
        let names: Vec<_> = list(&main)
            .expect("list")
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["10-memory.toml", "20-memory.toml", "30-agent.toml"]);
        let c = crate::config::load(&main).expect("merged config");
        assert_eq!(c.qemu.memory_mib, 1024, "20- overrides 10-");
        assert_eq!(c.qemu.vcpus, 2);
        assert_eq!(c.qemu.kernel, PathBuf::from("/k"), "main file's keys kept");
        assert_eq!(
            c.annotation_policy.enable_annotations,
            ["kernel_params"],
            "arrays are replaced, not appended"
        );
        assert_eq!(c.agent_dial_timeout, std::time::Duration::from_secs(5));
    }

    #[test]
    fn no_directory_means_the_main_file_alone() {
        let (_d, main) = setup(&[]);
        assert!(list(&main).expect("list").is_empty());
        let c = crate::config::load(&main).expect("config");
        assert_eq!(c.qemu.memory_mib, 256);
    }

    #[test]
    fn a_broken_drop_in_names_its_file() {
        let (_d, main) = setup(&[("50-bad.toml", "[hypervisor.qemu\n")]);
        let e = crate::config::load(&main).expect_err("broken drop-in");
        assert!(e.to_string().contains("50-bad.toml"), "{e}");
        let (_d, main) = setup(&[("50-bad.toml", "[hypervisor.qemu]\ndefault_vcpus = 0\n")]);
        let e = crate::config::load(&main).expect_err("invalid value");
        assert!(e.to_string().contains("default_vcpus"), "{e}");
    }
}
