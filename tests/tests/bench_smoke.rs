//! One iteration of `kata-bench` (the harness behind `make bench`): one pod
//! start on each side, one floor boot, one exec each, one-container memory.
//! Checks that the report files exist and hold numbers.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

fn number(v: &Value, path: &[&str]) -> Option<f64> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_f64()
}

#[test]
fn smoke_run_writes_a_report_with_numbers() -> Result<()> {
    integration_tests::require_vm!();
    let out = PathBuf::from(format!(
        "/var/lib/kata-shim-test/bench-smoke-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_kata-bench"))
        .arg("--smoke")
        .arg("--out")
        .arg(&out)
        .output()
        .context("running kata-bench")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "kata-bench --smoke failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        stdout.contains("pod start / (runc start + VM floor)"),
        "no ratio table printed:\n{stdout}"
    );

    let md = std::fs::read_to_string(out.join("report.md"))?;
    assert!(md.contains("## 1. Pod start"), "{md}");
    let json: Value = serde_json::from_str(&std::fs::read_to_string(out.join("report.json"))?)?;
    for path in [
        &["pod_start_ms", "kata", "median"][..],
        &["pod_start_ms", "runc", "median"],
        &["pod_start_ms", "floor", "median"],
        &["exec_ms", "kata", "median"],
        &["exec_ms", "runc", "median"],
    ] {
        let v = number(&json, path).with_context(|| format!("{path:?} missing in {json:#}"))?;
        assert!(v.is_finite() && v > 0.0, "{path:?} = {v}");
    }
    assert_eq!(
        json["failed_sections"],
        serde_json::json!([]),
        "notes: {}",
        json["notes"]
    );
    let shim = &json["shim_memory"][0];
    assert!(
        number(shim, &["kata", "pss_kib"]).unwrap_or(0.0) > 0.0,
        "{shim}"
    );
    assert!(
        number(shim, &["runc", "pss_kib"]).unwrap_or(0.0) > 0.0,
        "{shim}"
    );
    assert!(std::fs::read_to_string(out.join("scaling.svg"))?.starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
