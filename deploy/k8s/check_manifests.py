#!/usr/bin/env python3
"""Checks of the rendered manifests that schema validation cannot make.

Used by deploy/k8s/validate.sh:

    check_manifests.py CONFIG_RS K8S_ROOT NAME=RENDERED.yaml [NAME=RENDERED.yaml ...]

- the ConfigMap's admetrics.toml and the Secret's secrets.toml (and every *.toml or
  *.toml.example file under K8S_ROOT) parse as TOML and use only the sections and
  keys that common/src/config.rs declares (the structs deny unknown fields);
- speed-layer replicas (and an autoscaler's maximum) <= kafka.partitions of the
  rendered configuration: a consumer beyond the partition count gets nothing;
- the speed layer's terminationGracePeriodSeconds > speed.shutdown_timeout, so the
  final flush on SIGTERM is not cut short by SIGKILL;
- every container has CPU and memory requests and limits, and the hardened
  securityContext (non-root, no privilege escalation, read-only root, no capabilities);
- a pod that mounts a Secret without world-read mode sets fsGroup (else the non-root
  user cannot read it); every ConfigMap a pod mounts is in the render;
- the archiver and the scheduler are single replicas with the Recreate strategy; the
  API has >= 2 replicas and a PodDisruptionBudget;
- a render named prod carries no CHANGE-ME placeholder.

Prints one line per problem, prefixed with the render's name; exits 1 when any.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

DEFAULT_PARTITIONS = 8
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


# ---------------------------------------------------------------- config.rs schema

def config_schema(config_rs: Path) -> dict:
    """The key tree of `Config` as common/src/config.rs declares it.

    A struct-typed field is a nested table, a `BTreeMap`/`HashMap` field a table with
    free keys (None), anything else a value (True).
    """
    src = config_rs.read_text()
    structs: dict[str, list[tuple[str, str]]] = {}
    for m in re.finditer(r"pub struct (\w+)\s*\{(.*?)\n\}", src, re.S):
        fields = re.findall(r"^\s*pub (\w+):\s*([^,\n]+),", m.group(2), re.M)
        structs[m.group(1)] = fields
    if "Config" not in structs:
        raise SystemExit(f"check_manifests: no `pub struct Config` in {config_rs}")

    def tree(name: str) -> dict:
        out: dict = {}
        for field, ty in structs[name]:
            ty = ty.strip()
            if ty in structs:
                out[field] = tree(ty)
            elif re.match(r"(std::collections::)?(BTreeMap|HashMap)\b", ty):
                out[field] = None
            else:
                out[field] = True
        return out

    return tree("Config")


def unknown_keys(doc: dict, schema: dict, prefix: str = "") -> list[str]:
    bad = []
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if key not in schema:
            bad.append(path)
        elif isinstance(schema[key], dict):
            if not isinstance(value, dict):
                bad.append(f"{path} (a section, got a value)")
            else:
                bad.extend(unknown_keys(value, schema[key], path + "."))
        elif schema[key] is None and not isinstance(value, dict):
            bad.append(f"{path} (a table, got a value)")
    return bad


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def seconds(text: str) -> float:
    """A humantime duration ("30s", "1m 30s", "500ms") in seconds."""
    units = {
        "ms": 0.001, "msec": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1,
        "seconds": 1, "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
        "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400,
        "day": 86400, "days": 86400,
    }
    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or re.sub(r"[\d\sa-z]", "", text):
        raise ValueError(f"not a duration: {text!r}")
    total = 0.0
    for n, unit in parts:
        if unit not in units:
            raise ValueError(f"unknown unit {unit!r} in {text!r}")
        total += int(n) * units[unit]
    return total


# ---------------------------------------------------------------- manifests

def pod_spec(obj: dict) -> dict | None:
    if obj.get("kind") in POD_KINDS:
        return (obj.get("spec") or {}).get("template", {}).get("spec")
    if obj.get("kind") == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if obj.get("kind") == "Pod":
        return obj.get("spec")
    return None


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


def runs(obj: dict, binary: str, sub: str) -> bool:
    spec = pod_spec(obj) or {}
    for c in spec.get("containers") or []:
        argv = list(c.get("command") or []) + list(c.get("args") or [])
        if argv[:1] == [binary] and sub in argv[1:2]:
            return True
    return False


def check_render(name: str, objs: list[dict], schema: dict, errors: list[str]) -> None:
    def err(msg: str) -> None:
        errors.append(f"{name}: {msg}")

    def ident(o: dict) -> str:
        return f"{o.get('kind')}/{o.get('metadata', {}).get('name')}"

    # Configuration: the ConfigMap's file, with the Secret's file merged over it.
    config: dict = {}
    secrets: dict = {}
    for o in objs:
        if o.get("kind") == "ConfigMap" and "admetrics.toml" in (o.get("data") or {}):
            config = parse_toml(f"{ident(o)} admetrics.toml", o["data"]["admetrics.toml"], schema, err)
        if o.get("kind") == "Secret" and "secrets.toml" in (o.get("stringData") or {}):
            secrets = parse_toml(f"{ident(o)} secrets.toml", o["stringData"]["secrets.toml"], schema, err)
    if not config:
        err("no ConfigMap with an admetrics.toml key")
    cfg = merge(config, secrets)
    partitions = (cfg.get("kafka") or {}).get("partitions", DEFAULT_PARTITIONS)
    try:
        shutdown = seconds((cfg.get("speed") or {}).get("shutdown_timeout", "30s"))
    except ValueError as e:
        err(f"speed.shutdown_timeout: {e}")
        shutdown = DEFAULT_SHUTDOWN_TIMEOUT_S

    configmaps = {o["metadata"]["name"] for o in objs if o.get("kind") == "ConfigMap"}
    speed = [o for o in objs if runs(o, "speed-layer", "run")]
    if not speed:
        err("no workload runs `speed-layer run`")
    for o in speed:
        replicas = (o.get("spec") or {}).get("replicas", 1)
        if replicas > partitions:
            err(
                f"{ident(o)} has {replicas} replicas, more than kafka.partitions = {partitions}"
                " (the extra consumers would get no partition)"
            )
        grace = pod_spec(o).get("terminationGracePeriodSeconds", DEFAULT_GRACE_S)
        if grace <= shutdown:
            err(
                f"{ident(o)} terminationGracePeriodSeconds = {grace} must be longer than"
                f" speed.shutdown_timeout = {shutdown:g}s (SIGKILL would cut the final flush short)"
            )
    for o in objs:
        if o.get("kind") != "HorizontalPodAutoscaler":
            continue
        target = o["spec"]["scaleTargetRef"]["name"]
        if any(s["metadata"]["name"] == target and s["kind"] == o["spec"]["scaleTargetRef"]["kind"] for s in speed):
            if o["spec"]["maxReplicas"] > partitions:
                err(f"{ident(o)} maxReplicas {o['spec']['maxReplicas']} > kafka.partitions = {partitions}")

    for o in objs:
        spec = pod_spec(o)
        if spec is None:
            continue
        psc = spec.get("securityContext") or {}
        for c in containers(spec):
            where = f"{ident(o)} container {c.get('name')}"
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        err(f"{where} has no {r} {kind[:-1]}")
            sc = c.get("securityContext") or {}
            if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
                err(f"{where} does not set runAsNonRoot: true")
            if sc.get("allowPrivilegeEscalation") is not False:
                err(f"{where} does not set allowPrivilegeEscalation: false")
            if sc.get("readOnlyRootFilesystem") is not True:
                err(f"{where} does not set readOnlyRootFilesystem: true")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                err(f"{where} does not drop ALL capabilities")
        for v in spec.get("volumes") or []:
            if "secret" in v:
                mode = v["secret"].get("defaultMode", 0o644)
                if not mode & 0o004 and not psc.get("fsGroup"):
                    err(f"{ident(o)} mounts Secret volume {v['name']} with mode {mode:o} but sets no fsGroup")
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                err(f"{ident(o)} mounts ConfigMap {v['configMap']['name']}, which is not in the render")

    for binary, sub in (("batch-layer", "archive"), ("batch-layer", "schedule")):
        for o in (o for o in objs if runs(o, binary, sub)):
            if o["kind"] != "Deployment":
                continue
            if o["spec"].get("replicas", 1) != 1:
                err(f"{ident(o)} (`{binary} {sub}`) must have exactly 1 replica")
            if (o["spec"].get("strategy") or {}).get("type") != "Recreate":
                err(f"{ident(o)} (`{binary} {sub}`) must use the Recreate strategy (a single writer)")
    for o in (o for o in objs if runs(o, "serving-layer", "serve")):
        if o["spec"].get("replicas", 1) < 2:
            err(f"{ident(o)} needs at least 2 replicas")
        labels = o["spec"]["template"]["metadata"].get("labels") or {}
        if not any(
            p.get("kind") == "PodDisruptionBudget"
            and all(labels.get(k) == v for k, v in p["spec"]["selector"].get("matchLabels", {}).items())
            for p in objs
        ):
            err(f"{ident(o)} has no PodDisruptionBudget")

    if name == "prod":
        for o in objs:
            if "CHANGE-ME" in yaml.safe_dump(o):
                err(f"{ident(o)} carries a CHANGE-ME placeholder (production secrets come from outside)")


def parse_toml(what: str, text: str, schema: dict, err) -> dict:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        err(f"{what} is not valid TOML: {e}")
        return {}
    for key in unknown_keys(doc, schema):
        err(f"{what}: unknown key `{key}` (not in common/src/config.rs)")
    return doc


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    schema = config_schema(Path(argv[1]))
    root = Path(argv[2])
    errors: list[str] = []
    for f in sorted(list(root.rglob("*.toml")) + list(root.rglob("*.toml.example"))):
        parse_toml(str(f.relative_to(root)), f.read_text(), schema, lambda m: errors.append(f"files: {m}"))
    for arg in argv[3:]:
        name, _, path = arg.partition("=")
        objs = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
        check_render(name, objs, schema, errors)
    for e in errors:
        print(f"  {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
