//! The node's view (Kata's `kata-monitor` role): every running sandbox's
//! metrics, fetched from its socket and merged into one exposition, each
//! metric family once with the samples of every sandbox.

use std::path::{Path, PathBuf};

/// Every metrics socket under `root` (one per sandbox directory).
pub fn sockets(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path().join(super::SOCKET))
        .filter(|p| p.exists())
        .collect();
    out.sort();
    out
}

/// Merges expositions: families keep their first HELP/TYPE, samples follow
/// in the order the sandboxes were given.
pub fn merge(texts: &[String]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut heads: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut samples: std::collections::HashMap<String, Vec<String>> = Default::default();
    for text in texts {
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line
                .strip_prefix("# HELP ")
                .or_else(|| line.strip_prefix("# TYPE "))
            {
                current = rest.split_whitespace().next().unwrap_or("").to_owned();
                if !order.contains(&current) {
                    order.push(current.clone());
                }
                let h = heads.entry(current.clone()).or_default();
                if h.len() < 2 && !h.contains(&line.to_owned()) {
                    h.push(line.to_owned());
                }
            } else if !line.trim().is_empty() && !line.starts_with('#') {
                samples
                    .entry(current.clone())
                    .or_default()
                    .push(line.to_owned());
            }
        }
    }
    let mut out = String::new();
    for name in order {
        for h in heads.get(&name).into_iter().flatten() {
            out.push_str(h);
            out.push('\n');
        }
        for s in samples.get(&name).into_iter().flatten() {
            out.push_str(s);
            out.push('\n');
        }
    }
    out
}

/// Fetches and merges the metrics of every sandbox under `root`; sandboxes
/// that do not answer are reported in the second list.
pub async fn all(root: &Path) -> (String, Vec<String>) {
    let mut texts = Vec::new();
    let mut failed = Vec::new();
    for socket in sockets(root) {
        match super::server::fetch(&socket).await {
            Ok(t) => texts.push(t),
            Err(e) => failed.push(format!("{}: {e}", socket.display())),
        }
    }
    (merge(&texts), failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_appear_once_with_every_sandbox() {
        let a = "# HELP m help\n# TYPE m gauge\nm{sandbox=\"a\"} 1\n# HELP n h\n# TYPE n counter\nn{sandbox=\"a\"} 2\n";
        let b = a.replace("\"a\"", "\"b\"");
        let merged = merge(&[a.to_owned(), b]);
        assert_eq!(
            merged,
            "# HELP m help\n# TYPE m gauge\nm{sandbox=\"a\"} 1\nm{sandbox=\"b\"} 1\n\
             # HELP n h\n# TYPE n counter\nn{sandbox=\"a\"} 2\nn{sandbox=\"b\"} 2\n"
        );
    }
}
