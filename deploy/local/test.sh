#!/usr/bin/env bash
# The test command: brings the local stack up (idempotent), builds the binaries the
# tests run, and runs every test against the real services.
#   deploy/local/test.sh [extra cargo-nextest arguments, e.g. a test name filter]
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$REPO_ROOT/deploy/local/up.sh"
# The browser test drives Debian's headless Chromium through Debian's chromedriver.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  log "installing chromium chromium-driver (apt, for the browser test)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver \
    >"$LOGS/apt-chromium.log" 2>&1 || die "apt-get install chromium chromium-driver failed (see $LOGS/apt-chromium.log)"
fi
# The alert rules are checked and unit-tested with promtool (Debian's prometheus).
if ! command -v promtool >/dev/null 2>&1; then
  log "installing prometheus (apt, for promtool: the alert rules' tests)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus \
    >"$LOGS/apt-prometheus.log" 2>&1 || die "apt-get install prometheus failed (see $LOGS/apt-prometheus.log)"
fi
# The S3 archive test runs moto's S3-compatible server (PyPI, pinned) from a venv.
MOTO_VENV=${ADMETRICS_MOTO_VENV:-$HOME/.cache/admetrics-moto}
if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  log "installing moto[server] 5.2.5 into $MOTO_VENV (S3-compatible server for the archive test)"
  python3 -m venv "$MOTO_VENV" || die "python3 -m venv $MOTO_VENV failed"
  "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.2.5" \
    >"$LOGS/pip-moto.log" 2>&1 || die "pip install moto[server] failed (see $LOGS/pip-moto.log)"
fi
export ADMETRICS_MOTO_SERVER=$MOTO_VENV/bin/moto_server
# The API's property-based test runs schemathesis (PyPI, pinned) from a venv against
# the server's /openapi.json; a venv of another version is reinstalled.
SCHEMATHESIS_VERSION=4.32.5
SCHEMATHESIS_VENV=${ADMETRICS_SCHEMATHESIS_VENV:-$HOME/.cache/admetrics-schemathesis}
if ! "$SCHEMATHESIS_VENV/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $SCHEMATHESIS_VERSION"; then
  log "installing schemathesis $SCHEMATHESIS_VERSION into $SCHEMATHESIS_VENV (property-based tests of the API)"
  python3 -m venv --clear "$SCHEMATHESIS_VENV" || die "python3 -m venv $SCHEMATHESIS_VENV failed"
  "$SCHEMATHESIS_VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
    >"$LOGS/pip-schemathesis.log" 2>&1 || die "pip install schemathesis failed (see $LOGS/pip-schemathesis.log)"
fi
export ADMETRICS_SCHEMATHESIS=$SCHEMATHESIS_VENV/bin/schemathesis
# The broker test runs a private Apache Kafka broker from the jars up.sh installed.
export ADMETRICS_KAFKA_HOME="$KAFKA_HOME"
# Each test works in a namespace of its own (databases admetrics_t<id>, topics
# t<id>-*); drop the databases earlier runs left so they do not pile up.
log "dropping the databases of earlier test runs"
for db in $(mariadb -h127.0.0.1 -P"$MYSQL_PORT" -uadmetrics -padmetrics -N -e \
    "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE 'admetrics\\_t%'" 2>/dev/null); do
  mariadb -h127.0.0.1 -P"$MYSQL_PORT" -uadmetrics -padmetrics -e "DROP DATABASE \`$db\`" 2>/dev/null || log "could not drop MySQL database $db"
done
for db in $(clickhouse-client --port "$CH_TCP_PORT" --query \
    "SELECT name FROM system.databases WHERE name LIKE 'admetrics\\_t%'" 2>/dev/null); do
  clickhouse-client --port "$CH_TCP_PORT" --query "DROP DATABASE IF EXISTS \`$db\`" 2>/dev/null || log "could not drop ClickHouse database $db"
done
rm -rf "${TMPDIR:-/tmp}/admetrics-it"
cd "$REPO_ROOT"
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast -- "$@"
fi
