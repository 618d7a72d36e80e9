#!/usr/bin/env python3
"""Renders the alert rules (deploy/prometheus/alerts.yml) as the prod overlay's
PrometheusRule (Prometheus Operator, monitoring.coreos.com/v1), whose spec.groups are
the rule file's groups:

    render_rules.py            writes deploy/k8s/overlays/prod/prometheus-rule.yaml
    render_rules.py --check    exits 1 when that file is not what it would write

Kustomize cannot put another file's YAML into a custom resource's spec, so the
PrometheusRule is generated and committed; check_manifests.py (run by validate.sh)
fails when its groups differ from alerts.yml's. Needs PyYAML (the validation venv of
validate.sh has it: ${ADMETRICS_VENV:-~/.cache/admetrics-venv}/bin/python).
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "prometheus" / "alerts.yml"
OUTPUT = HERE / "overlays" / "prod" / "prometheus-rule.yaml"
REGENERATE = "python3 deploy/k8s/render_rules.py"

API_VERSION = "monitoring.coreos.com/v1"
KIND = "PrometheusRule"
NAME = "admetrics"
# What the Prometheus Operator's Prometheus resource selects rules by (its
# spec.ruleSelector): kube-prometheus-stack selects `release: <its Helm release>`.
# Change this to the cluster's selector (docs/operations.md#alert-rules-in-kubernetes).
SELECTOR_LABELS = {"release": "prometheus"}
LABELS = {
    "app.kubernetes.io/name": "admetrics",
    "app.kubernetes.io/component": "alerts",
    "app.kubernetes.io/part-of": "admetrics",
    "app.kubernetes.io/managed-by": "kustomize",
    **SELECTOR_LABELS,
}

HEADER = f"""\
# GENERATED from deploy/prometheus/alerts.yml by deploy/k8s/render_rules.py: do not
# edit. Change alerts.yml (and its promtool tests, alerts_test.yml), then regenerate:
#   {REGENERATE}
# validate.sh fails while spec.groups differ from alerts.yml's groups. The labels
# carry what the Prometheus Operator's ruleSelector matches (release: prometheus here;
# docs/operations.md#alert-rules-in-kubernetes).
"""


def load_groups(path: Path = ALERTS) -> list:
    """The `groups` of a Prometheus rule file."""
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("groups"), list):
        raise SystemExit(f"{path}: not a Prometheus rule file (no top-level `groups:` list)")
    return doc["groups"]


def rule_object(groups: list) -> dict:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": NAME, "labels": dict(LABELS)},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Block style, sequences indented under their key (the style of deploy/k8s)."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)

    def write_folded(self, text: str) -> None:
        # The emitter breaks a folded line at the first space past the width, so a long
        # token after it overshoots: aim short enough that lines stay within yamllint's
        # 120 columns.
        saved, self.best_width = self.best_width, 64
        try:
            super().write_folded(text)
        finally:
            self.best_width = saved


def _str(dumper: yaml.SafeDumper, value: str):
    # A line-broken string (alerts.yml writes long expressions as `>` blocks) stays a
    # block: folded (wrapped at the width) when it is one line, literal otherwise.
    style = None
    if "\n" in value:
        style = "|" if "\n" in value.rstrip("\n") else ">"
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(groups: list) -> str:
    body = yaml.dump(
        rule_object(groups), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
    )
    text = HEADER + body
    # What is written must mean exactly the rule file's groups.
    assert yaml.safe_load(text)["spec"]["groups"] == groups, "render does not round-trip"
    return text


def main(argv: list[str]) -> int:
    if argv[1:] not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    text = render(load_groups())
    if argv[1:] == ["--check"]:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(HERE.parent.parent)} is out of date: run {REGENERATE}")
            return 1
        return 0
    OUTPUT.write_text(text)
    rules = sum(len(g.get("rules") or []) for g in load_groups())
    print(f"wrote {OUTPUT.relative_to(HERE.parent.parent)} ({rules} rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
