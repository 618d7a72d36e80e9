#!/usr/bin/env python3
"""Checks of the rendered manifests that schema validation cannot make.

Used by deploy/k8s/validate.sh:

    check_manifests.py [--alerts ALERTS.yml] CONFIG_RS K8S_ROOT NAME=RENDERED.yaml [...]

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
- every platform container (speed-layer, batch-layer, serving-layer) of a render runs
  the same image, and has its ADMETRICS_CONFIG and ADMETRICS_SECRETS_FILE mounted from
  a ConfigMap and a Secret; with a local batch.archive_url the archiver and the
  recompute mount it (a `schedule --metrics-only` reads no archive);
- the archiver is a single replica with the Recreate strategy; the API has >= 2
  replicas and a PodDisruptionBudget;
- exactly one workload drives the recompute (`batch-layer schedule` without
  --metrics-only), never two: either the scheduler Deployment (1 replica, Recreate, no
  --once; base, dev) or a CronJob of an Indexed Job (prod) running
  `schedule --once --late-data on-schedule --shard $(JOB_COMPLETION_INDEX)/N` with
  completions = parallelism = N <= kafka.partitions and <= MAX_PARTS (64),
  backoffLimitPerIndex and maxFailedIndexes < N, restartPolicy Never, concurrencyPolicy
  Forbid, startingDeadlineSeconds, activeDeadlineSeconds, history limits, and the
  schedule and time zone of batch.schedule / batch.platform_tz;
- a `batch-layer schedule --metrics-only` workload (no recompute: the abandoned-run
  sweep and the batch gauges) runs only beside the CronJob, which it must accompany
  (the CronJob's pods serve no /metrics, so without it the batch alerts have no
  series): at most one, a Deployment of at most 1 replica, without the one-off flags;
- a long-running scheduler (either kind) serves /metrics where Prometheus can reach it:
  --metrics-listen on a non-loopback address, that port a containerPort, and the
  prometheus.io/port annotation (when it has prometheus.io/scrape) naming it;
- every `--shard i/N` of `batch-layer schedule` or `recompute` has 0 <= i < N <= 64
  (the binary refuses more parts: recompute::MAX_PARTS);
- a PrometheusRule (monitoring.coreos.com/v1, no Kubernetes schema: checked here) has
  the ruleSelector labels of render_rules.py, only known fields, every alert an expr,
  labels.severity (page|ticket), annotations.summary and .runbook, a valid `for`; and
  its spec.groups equal the groups of ALERTS.yml (deploy/prometheus/alerts.yml), or
  the check names the command that regenerates it. The prod render must carry it;
- a render named prod carries no CHANGE-ME placeholder.

Prints one line per problem, prefixed with the render's name; exits 1 when any.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import yaml

sys.dont_write_bytecode = True  # no __pycache__ beside the script (it is in the repository)
import render_rules  # noqa: E402  (beside this script: the PrometheusRule constants)

DEFAULT_PARTITIONS = 8
DEFAULT_SHUTDOWN_TIMEOUT_S = 30.0
DEFAULT_GRACE_S = 30  # Kubernetes' default terminationGracePeriodSeconds
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}
BINARIES = {"speed-layer", "batch-layer", "serving-layer"}
# batch.schedule and batch.platform_tz when the configuration does not set them (read
# from config.rs's `impl Default for BatchConfig` when found there).
DEFAULT_BATCH_SCHEDULE = "0 */15 * * * *"
DEFAULT_PLATFORM_TZ = "UTC"
UTC_NAMES = {"UTC", "Etc/UTC", "Etc/UCT", "UCT", "Etc/Zulu", "Zulu", "Etc/GMT", "GMT"}
INDEX_ENV = "JOB_COMPLETION_INDEX"
INDEX_FIELD = "batch.kubernetes.io/job-completion-index"
# The most parts a day can be split into (`--shard i/N`, N <= this): MAX_PARTS of
# batch-layer/src/recompute/mod.rs, read from there when found (max_parts()).
DEFAULT_MAX_PARTS = 64
METRICS_ONLY = "--metrics-only"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
# `batch-layer schedule` listens here unless --metrics-listen says otherwise.
DEFAULT_SCHEDULE_METRICS_LISTEN = "127.0.0.1:9103"
# Flags of `schedule --once` only: clap refuses them with --metrics-only (exit 2, a
# crash loop), or they do nothing there.
ONE_OFF_FLAGS = ("--once", "--late-data", "--as-of", "--shard")


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


def batch_defaults(config_rs: Path) -> dict:
    """batch.schedule and batch.platform_tz defaults as config.rs's Default says."""
    src = config_rs.read_text()
    out = {"schedule": DEFAULT_BATCH_SCHEDULE, "platform_tz": DEFAULT_PLATFORM_TZ}
    m = re.search(r"impl Default for BatchConfig\s*\{(.*?)\n\}", src, re.S)
    for key in out:
        found = m and re.search(rf"\b{key}: \"([^\"]*)\"\.into\(\)", m.group(1))
        if found:
            out[key] = found.group(1)
    return out


def max_parts(config_rs: Path) -> int:
    """recompute::MAX_PARTS (batch-layer/src/recompute/mod.rs beside common/), else 64."""
    src = config_rs.resolve().parents[2] / "batch-layer" / "src" / "recompute" / "mod.rs"
    if src.is_file():
        m = re.search(r"pub const MAX_PARTS: u32 = (\d+);", src.read_text())
        if m:
            return int(m.group(1))
    return DEFAULT_MAX_PARTS


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


def argv_of(c: dict) -> list[str]:
    return [str(a) for a in list(c.get("command") or []) + list(c.get("args") or [])]


def runs(obj: dict, binary: str, sub: str) -> bool:
    return command_container(obj, binary, sub) is not None


def command_container(obj: dict, binary: str, sub: str) -> dict | None:
    """The container of `obj`'s pod that runs `binary sub ...`, if any."""
    spec = pod_spec(obj) or {}
    for c in spec.get("containers") or []:
        a = argv_of(c)
        if a[:1] == [binary] and sub in a[1:2]:
            return c
    return None


def flag_value(args: list[str], flag: str) -> str | None:
    """The value of `--flag V` or `--flag=V` in `args`."""
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]
    return None


def has_flag(args: list[str], flag: str) -> bool:
    """Whether `--flag` (alone, or as `--flag=V`) is in `args`."""
    return any(a == flag or a.startswith(flag + "=") for a in args)


def metrics_only(obj: dict) -> bool:
    """Whether `obj` runs `batch-layer schedule --metrics-only` (no recompute)."""
    c = command_container(obj, "batch-layer", "schedule")
    return c is not None and has_flag(argv_of(c), METRICS_ONLY)


def shard_problem(shard: str, limit: int) -> str:
    """Why `--shard` value `shard` (i/N, i maybe $(JOB_COMPLETION_INDEX)) is refused; ''."""
    i, sep, n = shard.partition("/")
    if not sep or not n.isdigit() or not (i.isdigit() or i == f"$({INDEX_ENV})"):
        return "is not i/N"
    if not 1 <= int(n) <= limit:
        return (
            f"has N = {n}: the binary accepts 1 <= N <= {limit} (recompute::MAX_PARTS; the sweep of"
            " abandoned runs checks that many leases per day)"
        )
    if i.isdigit() and int(i) >= int(n):
        return f"has i = {i}, not below N = {n}"
    return ""


def mount_covers(spec: dict, c: dict, path: str, source: str) -> bool:
    """Whether a volumeMount of `c` whose volume is of kind `source` holds `path`."""
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    for m in c.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/")
        if (path == mp or path.startswith(mp + "/")) and source in volumes.get(m["name"], {}):
            return True
    return False


def cron_of(schedule: str) -> tuple[list[str] | None, str]:
    """batch.schedule (cron with seconds, optional year) as Kubernetes' five fields."""
    f = schedule.split()
    if len(f) not in (6, 7):
        return None, "not a 6- or 7-field cron expression (sec min hour dom month dow [year])"
    if f[0] != "0":
        return None, f"fires at second {f[0]}: a CronJob fires at second 0 only"
    if len(f) == 7 and f[6] != "*":
        return None, f"is limited to the year(s) {f[6]}: a CronJob has no year field"
    return f[1:6], ""


def check_render(
    name: str,
    objs: list[dict],
    schema: dict,
    defaults: dict,
    alerts: list | None,
    errors: list[str],
    parts_limit: int = DEFAULT_MAX_PARTS,
) -> None:
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

    # One image, the configuration and the secrets in every platform container.
    images: dict[str, list[str]] = {}
    archive_url = str((cfg.get("batch") or {}).get("archive_url", ""))
    if archive_url.startswith("file://"):
        local_archive = archive_url.removeprefix("file://")
    elif archive_url.startswith("/"):
        local_archive = archive_url
    else:
        local_archive = ""  # an object store, or the default under state_dir (not checked)
    for o in objs:
        spec = pod_spec(o)
        if spec is None:
            continue
        for c in spec.get("containers") or []:
            a = argv_of(c)
            if a[:1] and a[0] in BINARIES:
                images.setdefault(c.get("image", ""), []).append(f"{ident(o)} container {c.get('name')}")
                env = {e["name"]: e.get("value") for e in c.get("env") or []}
                for var, source in (("ADMETRICS_CONFIG", "configMap"), ("ADMETRICS_SECRETS_FILE", "secret")):
                    path = env.get(var)
                    if not path:
                        err(f"{ident(o)} container {c.get('name')} does not set {var}")
                    elif not mount_covers(spec, c, path, source):
                        err(f"{ident(o)} container {c.get('name')}: {var} = {path} is not on a mounted {source} volume")
                reads_archive = a[1:2] in (["archive"], ["recompute"]) or (
                    a[1:2] == ["schedule"] and not has_flag(a, METRICS_ONLY)
                )
                if a[:1] == ["batch-layer"] and a[1:2] in (["schedule"], ["recompute"]):
                    shard = flag_value(a, "--shard")
                    why = shard_problem(shard, parts_limit) if shard is not None else ""
                    if why:
                        err(f"{ident(o)} container {c.get('name')}: --shard {shard} {why}")
                if local_archive and reads_archive:
                    if not mount_covers(spec, c, local_archive, "persistentVolumeClaim"):
                        err(
                            f"{ident(o)} container {c.get('name')} (`{' '.join(a[:2])}`) does not mount the"
                            f" local batch.archive_url {archive_url} from a PersistentVolumeClaim"
                        )
    if len(images) > 1:
        err("platform containers run different images: " + "; ".join(f"{i}: {', '.join(w)}" for i, w in images.items()))

    # The archiver: one writer.
    for o in (o for o in objs if runs(o, "batch-layer", "archive")):
        if o["kind"] != "Deployment":
            err(f"{ident(o)} runs `batch-layer archive`: the archiver is a Deployment")
            continue
        if o["spec"].get("replicas", 1) != 1:
            err(f"{ident(o)} (`batch-layer archive`) must have exactly 1 replica")
        if (o["spec"].get("strategy") or {}).get("type") != "Recreate":
            err(f"{ident(o)} (`batch-layer archive`) must use the Recreate strategy (a single writer)")

    # The recompute: exactly one driver (`schedule` without --metrics-only), the
    # scheduler Deployment or an Indexed CronJob; beside the CronJob, one metrics-only
    # scheduler serves the batch gauges its short-lived pods cannot.
    schedulers = [o for o in objs if runs(o, "batch-layer", "schedule")]
    drivers = [o for o in schedulers if not metrics_only(o)]
    watchers = [o for o in schedulers if metrics_only(o)]
    if not drivers:
        err(
            "no workload runs `batch-layer schedule` without --metrics-only: no day would ever turn final"
            " (a metrics-only scheduler never recomputes)"
        )
    elif len(drivers) > 1:
        err(
            "more than one workload drives the recompute (`batch-layer schedule` without --metrics-only: "
            + ", ".join(ident(o) for o in drivers)
            + "): each would recompute the days again, and a different split discards the other's parts"
        )
    batch = cfg.get("batch") or {}
    for o in drivers:
        c = command_container(o, "batch-layer", "schedule")
        args = argv_of(c)
        if o["kind"] == "Deployment":
            if o["spec"].get("replicas", 1) != 1:
                err(f"{ident(o)} (`batch-layer schedule`) must have exactly 1 replica")
            if (o["spec"].get("strategy") or {}).get("type") != "Recreate":
                err(f"{ident(o)} (`batch-layer schedule`) must use the Recreate strategy (a single writer)")
            if "--once" in args:
                err(f"{ident(o)} runs `batch-layer schedule --once` in a Deployment: it would exit and restart")
            check_metrics_endpoint(o, c, args, err)
        elif o["kind"] == "CronJob":
            check_recompute_cronjob(o, c, args, batch, defaults, partitions, err)
        else:
            err(f"{ident(o)} runs `batch-layer schedule`: use the scheduler Deployment or an Indexed CronJob")
    cronjob_drivers = [o for o in drivers if o["kind"] == "CronJob"]
    if len(watchers) > 1:
        err(
            "more than one workload runs `batch-layer schedule --metrics-only` ("
            + ", ".join(ident(o) for o in watchers)
            + "): each would export the batch gauges again (duplicate series)"
        )
    if watchers and drivers and not cronjob_drivers:
        err(
            f"{', '.join(ident(o) for o in watchers)} runs `batch-layer schedule --metrics-only` beside"
            f" {', '.join(ident(o) for o in drivers)}, a full scheduler that exports the same gauges itself:"
            " a metrics-only scheduler belongs beside the recompute CronJob only"
        )
    if cronjob_drivers and not watchers:
        err(
            f"{', '.join(ident(o) for o in cronjob_drivers)} drives the recompute, and no workload runs"
            " `batch-layer schedule --metrics-only`: the CronJob's pods serve no /metrics, so the batch alerts"
            " (BatchRunFailed, BatchRunAbandoned, DayNotFinalByDeadline, ReconciliationDifference) would have"
            " no series"
        )
    for o in watchers:
        c = command_container(o, "batch-layer", "schedule")
        args = argv_of(c)
        if o["kind"] != "Deployment":
            err(f"{ident(o)} runs `batch-layer schedule --metrics-only`: it is long-running, a Deployment")
            continue
        if o["spec"].get("replicas", 1) > 1:
            err(
                f"{ident(o)} (`batch-layer schedule --metrics-only`) must have at most 1 replica"
                " (each replica exports the same gauges)"
            )
        for flag in ONE_OFF_FLAGS:
            if has_flag(args, flag):
                err(
                    f"{ident(o)} container {c.get('name')}: {flag} with --metrics-only"
                    " (a flag of `schedule --once`: refused or without effect)"
                )
        check_metrics_endpoint(o, c, args, err)
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

    rules = [o for o in objs if o.get("kind") == render_rules.KIND]
    if name == "prod" and not rules:
        err(f"no PrometheusRule: the alert rules are not shipped (generate with {render_rules.REGENERATE})")
    for o in rules:
        check_prometheus_rule(o, alerts, err)

    if name == "prod":
        for o in objs:
            if "CHANGE-ME" in yaml.safe_dump(o):
                err(f"{ident(o)} carries a CHANGE-ME placeholder (production secrets come from outside)")


def check_metrics_endpoint(o: dict, c: dict, args: list[str], err) -> None:
    """A long-running scheduler's /metrics is reachable by Prometheus (module docs)."""
    where = f"{o['kind']}/{o['metadata']['name']} container {c.get('name')}"
    listen = flag_value(args, "--metrics-listen") or DEFAULT_SCHEDULE_METRICS_LISTEN
    host, _, port = listen.rpartition(":")
    if host in LOOPBACK_HOSTS or not port.isdigit():
        err(
            f"{where}: --metrics-listen {listen} is not reachable from Prometheus"
            " (listen on 0.0.0.0:PORT; the batch alerts read this endpoint)"
        )
        return
    ports = {p.get("containerPort") for p in c.get("ports") or []}
    if int(port) not in ports:
        err(f"{where}: --metrics-listen port {port} is not a containerPort ({sorted(ports)})")
    ann = (o["spec"]["template"].get("metadata") or {}).get("annotations") or {}
    if ann.get("prometheus.io/scrape") == "true" and str(ann.get("prometheus.io/port")) != port:
        err(f"{where}: annotation prometheus.io/port {ann.get('prometheus.io/port')!r} is not the metrics port {port}")


def check_recompute_cronjob(
    o: dict, c: dict, args: list[str], batch: dict, defaults: dict, partitions: int, err
) -> None:
    """The invariants of a recompute run as a CronJob of an Indexed Job (module docs)."""
    where = f"CronJob/{o['metadata']['name']}"
    spec = o["spec"]
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]

    if spec.get("concurrencyPolicy") != "Forbid":
        err(f"{where}: concurrencyPolicy must be Forbid (two ticks at once would recompute the same parts)")
    if not isinstance(spec.get("startingDeadlineSeconds"), int) or spec["startingDeadlineSeconds"] <= 0:
        err(f"{where}: set startingDeadlineSeconds (a late tick is skipped, not run late or piled up)")
    for limit in ("successfulJobsHistoryLimit", "failedJobsHistoryLimit"):
        if not isinstance(spec.get(limit), int):
            err(f"{where}: set {limit}")

    want_schedule = str(batch.get("schedule", defaults["schedule"]))
    fields, why = cron_of(want_schedule)
    if fields is None:
        err(f"{where}: batch.schedule `{want_schedule}` {why}; a CronJob cannot follow it")
    elif str(spec.get("schedule", "")).split() != fields:
        err(
            f"{where}: schedule `{spec.get('schedule')}` differs from batch.schedule `{want_schedule}`"
            f" (as a CronJob: `{' '.join(fields)}`)"
        )
    want_tz = str(batch.get("platform_tz", defaults["platform_tz"]))
    tz = spec.get("timeZone")
    if tz is None:
        err(f"{where}: set timeZone to batch.platform_tz ({want_tz}); without it the controller's zone applies")
    elif tz != want_tz and not (tz in UTC_NAMES and want_tz in UTC_NAMES):
        err(f"{where}: timeZone {tz} differs from batch.platform_tz {want_tz}")

    if job.get("completionMode") != "Indexed":
        err(f"{where}: completionMode must be Indexed (pod i computes part i/N)")
    n = job.get("completions")
    if not isinstance(n, int) or n < 1:
        err(f"{where}: completions must be set to N, the number of parts")
        return
    if job.get("parallelism", 1) != n:
        err(
            f"{where}: parallelism = {job.get('parallelism', 1)} must equal completions = {n}"
            " (a day turns final only when all N parts are written)"
        )
    if n > partitions:
        err(
            f"{where}: N = {n} parts but kafka.partitions = {partitions}: a part owns the partitions"
            " p with p mod N = i, so parts beyond the partition count would have nothing to compute"
        )
    if not isinstance(job.get("backoffLimitPerIndex"), int) or job["backoffLimitPerIndex"] < 0:
        err(f"{where}: set backoffLimitPerIndex (a failed part is retried on its own)")
    mfi = job.get("maxFailedIndexes")
    if not isinstance(mfi, int) or not 0 <= mfi < n:
        err(f"{where}: maxFailedIndexes = {mfi} must be set and below completions = {n}")
    if not isinstance(job.get("activeDeadlineSeconds"), int) or job["activeDeadlineSeconds"] <= 0:
        err(f"{where}: set activeDeadlineSeconds (bounds a run)")
    if pod.get("restartPolicy") != "Never":
        err(
            f"{where}: the pod's restartPolicy must be Never"
            " (backoffLimitPerIndex and podFailurePolicy count each retry as a new pod)"
        )

    if "--once" not in args:
        err(f"{where}: `batch-layer schedule` without --once would never exit")
    late = flag_value(args, "--late-data")
    if late != "on-schedule":
        err(
            f"{where} container {c.get('name')}: pass --late-data on-schedule (got {late!r}; the default,"
            " always, re-checks every final day for late data in each tick instead of once a day on"
            " batch.late_data_schedule)"
        )
    want_shard = f"$({INDEX_ENV})/{n}"
    shard = flag_value(args, "--shard")
    if shard != want_shard:
        err(
            f"{where} container {c.get('name')}: --shard is {shard!r}, must be {want_shard!r}"
            f" (completions = {n}: pod i computes part i of {n})"
        )
    for e in c.get("env") or []:
        if e["name"] == INDEX_ENV:
            field = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
            if INDEX_FIELD not in field:
                err(f"{where} container {c.get('name')}: {INDEX_ENV} must come from the pod's {INDEX_FIELD}")


RULE_FILE_KEYS = {
    "group": {"name", "interval", "rules", "limit", "query_offset", "labels", "partial_response_strategy"},
    "rule": {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"},
}
DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
SEVERITIES = {"page", "ticket"}


def check_prometheus_rule(o: dict, alerts: list | None, err) -> None:
    """A PrometheusRule's shape (Kubernetes has no schema for the CRD) and its groups
    against the rule file it is generated from."""
    where = f"PrometheusRule/{o.get('metadata', {}).get('name')}"
    if o.get("apiVersion") != render_rules.API_VERSION:
        err(f"{where}: apiVersion {o.get('apiVersion')} (want {render_rules.API_VERSION})")
    labels = o.get("metadata", {}).get("labels") or {}
    for k, v in render_rules.SELECTOR_LABELS.items():
        if labels.get(k) != v:
            err(f"{where}: label {k}={labels.get(k)!r}, want {v!r} (what the Prometheus ruleSelector matches)")
    spec = o.get("spec") or {}
    if set(spec) != {"groups"}:
        err(f"{where}: spec must hold exactly `groups`, has {sorted(spec)}")
    groups = spec.get("groups")
    if not isinstance(groups, list) or not groups:
        err(f"{where}: spec.groups is empty")
        return
    seen: set[str] = set()
    for g in groups:
        gname = g.get("name") if isinstance(g, dict) else None
        if not gname or gname in seen:
            err(f"{where}: every group needs a unique name (got {gname!r})")
        seen.add(gname)
        for k in set(g) - RULE_FILE_KEYS["group"]:
            err(f"{where} group {gname}: unknown field `{k}`")
        if not g.get("rules"):
            err(f"{where} group {gname}: no rules")
        for r in g.get("rules") or []:
            rname = r.get("alert") or r.get("record")
            at = f"{where} group {gname} rule {rname}"
            for k in set(r) - RULE_FILE_KEYS["rule"]:
                err(f"{at}: unknown field `{k}`")
            if ("alert" in r) == ("record" in r):
                err(f"{at}: a rule has exactly one of `alert` and `record`")
            if not isinstance(r.get("expr"), str) or not r["expr"].strip():
                err(f"{at}: no expr")
            for k in ("for", "keep_firing_for"):
                if k in r and not DURATION.match(str(r[k])):
                    err(f"{at}: `{k}: {r[k]}` is not a Prometheus duration")
            if "alert" in r:
                sev = (r.get("labels") or {}).get("severity")
                if sev not in SEVERITIES:
                    err(f"{at}: labels.severity {sev!r}, want one of {sorted(SEVERITIES)}")
                ann = r.get("annotations") or {}
                for k in ("summary", "runbook"):
                    if not ann.get(k):
                        err(f"{at}: no annotations.{k}")
    if alerts is None:
        return
    if groups != alerts:
        err(
            f"{where}: spec.groups differ from deploy/prometheus/alerts.yml ({describe_drift(groups, alerts)});"
            f" regenerate with: {render_rules.REGENERATE}"
        )


def describe_drift(have: list, want: list) -> str:
    def by_name(items, key):
        return {(i or {}).get(key) or (i or {}).get("record"): i for i in items or [] if isinstance(i, dict)}

    out = []
    hg, wg = by_name(have, "name"), by_name(want, "name")
    out += [f"group {g} only in the PrometheusRule" for g in hg.keys() - wg.keys()]
    out += [f"group {g} missing" for g in wg.keys() - hg.keys()]
    for g in hg.keys() & wg.keys():
        hr, wr = by_name(hg[g].get("rules"), "alert"), by_name(wg[g].get("rules"), "alert")
        out += [f"{g}/{r} only in the PrometheusRule" for r in hr.keys() - wr.keys()]
        out += [f"{g}/{r} missing" for r in wr.keys() - hr.keys()]
        out += [f"{g}/{r} changed" for r in hr.keys() & wr.keys() if hr[r] != wr[r]]
        if not out and hg[g] != wg[g]:
            out.append(f"group {g} differs (order or group fields)")
    return ", ".join(sorted(out)) or "group order differs"


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
    argv = list(argv)
    alerts = None
    if argv[1:2] == ["--alerts"] and len(argv) > 2:
        alerts = render_rules.load_groups(Path(argv[2]))
        del argv[1:3]
    if len(argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    schema = config_schema(Path(argv[1]))
    defaults = batch_defaults(Path(argv[1]))
    parts_limit = max_parts(Path(argv[1]))
    root = Path(argv[2])
    errors: list[str] = []
    for f in sorted(list(root.rglob("*.toml")) + list(root.rglob("*.toml.example"))):
        parse_toml(str(f.relative_to(root)), f.read_text(), schema, lambda m: errors.append(f"files: {m}"))
    for arg in argv[3:]:
        name, _, path = arg.partition("=")
        objs = [o for o in yaml.safe_load_all(Path(path).read_text()) if o]
        check_render(name, objs, schema, defaults, alerts, errors, parts_limit)
    for e in errors:
        print(f"  {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
