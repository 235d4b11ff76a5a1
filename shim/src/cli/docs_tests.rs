//! The documentation keeps up with the code: every configuration key the
//! parser knows and every annotation it applies is documented.

use crate::annotations::HYPERVISOR_PREFIX;
use crate::config::KNOWN_KEYS;

use super::env::IMPLEMENTED_ANNOTATIONS;

const CONFIGURATION_MD: &str = include_str!("../../../docs/configuration.md");

/// The part of the document under `## heading`, up to the next `## `.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let start = doc
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("docs/configuration.md has no `## {heading}` section"));
    let rest = &doc[start + heading.len() + 5..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn every_configuration_key_has_a_row_in_its_section() {
    let mut missing = Vec::new();
    for (name, keys) in KNOWN_KEYS {
        let part = section(CONFIGURATION_MD, &format!("[{name}]"));
        for key in keys {
            if !part.contains(&format!("\n| `{key}` | ")) {
                missing.push(format!("{name}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented in docs/configuration.md: {missing:?}"
    );
}

#[test]
fn every_applied_annotation_is_documented() {
    let part = section(CONFIGURATION_MD, "Annotations");
    for name in IMPLEMENTED_ANNOTATIONS {
        let row = format!("\n| `{HYPERVISOR_PREFIX}{name}` | ");
        assert!(part.contains(&row), "{name} is not documented");
    }
    for key in [
        crate::annotations::cri::SANDBOX_CPU_QUOTA,
        crate::annotations::cri::SANDBOX_CPU_PERIOD,
        crate::annotations::cri::SANDBOX_MEMORY,
    ] {
        assert!(part.contains(key), "{key} is not documented");
    }
}

#[test]
fn the_documents_the_index_names_exist() {
    let index = include_str!("../../../docs/README.md");
    for doc in [
        "install.md",
        "containerd.md",
        "kubernetes.md",
        "configuration.md",
        "operations.md",
        "troubleshooting.md",
    ] {
        assert!(
            index.contains(&format!("]({doc})")),
            "{doc} not in the index"
        );
    }
}

#[test]
fn every_metric_family_is_documented() {
    let ops = include_str!("../../../docs/operations.md");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = crate::metrics::render("docs", dir.path());
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(names.len() >= 5, "{text}");
    for name in names {
        assert!(
            ops.contains(&format!("| `{name}` |")),
            "{name} is not in docs/operations.md"
        );
    }
}
