#!/usr/bin/env bash
# Serving-layer benchmark (issue 14): the dashboard's metrics route under load, next to
# /healthz as the ceiling of the HTTP stack on this machine, measured in the same run.
#
#   deploy/local/bench-serving.sh            # single Redis, then Redis Cluster (3 masters)
#   BENCH_CLUSTER=0 deploy/local/bench-serving.sh   # single Redis only
#
# From nothing: local stack up, release build, a namespace of its own (topics, Redis
# prefix, MySQL database), the TalkingData sample replayed and consumed by the speed
# layer (and archived): the data set itself and BENCH_COPIES (10) copies of it, each
# shifted 3 more days into the past with event ids of its own, so that 30 days hold
# real data; the speed layer accepts 40-day-old events for this. Then the pipeline
# processes stop (their results stay in Redis and MySQL; BENCH_KEEP_PIPELINE=1 keeps
# them running) and wrk (Debian's, installed if missing) runs at 64 connections for
# each scenario of the 30-day range:
#   healthz          GET /healthz (a Redis PING each): the ceiling
#   provisional-30d  30 days, none final yet (speed layer only)
#   final-30d        30 days, all recomputed by the batch layer
#   mixed-30d        29 final days and today (provisional)
#   mixed-30d-by-ad  the same, group_by=ad
# Each line: the medians over BENCH_RUNS (3) wrk runs of requests/s and p50/p99/p99.9
# latency (ms), the errors of all runs, and the ratio of the median requests/s to
# healthz's. Settings: BENCH_CONNECTIONS (64), BENCH_DURATION (10s), BENCH_THREADS (2).
set -euo pipefail
source "$(dirname "$0")/env.sh"
DATA=${ADMETRICS_DATASET:-$REPO_ROOT/../shared/data/talkingdata_train_sample.csv}
[ -f "$DATA" ] || die "data set not found at $DATA (set ADMETRICS_DATASET)"
CONNECTIONS=${BENCH_CONNECTIONS:-64}
DURATION=${BENCH_DURATION:-10s}
THREADS=${BENCH_THREADS:-2}
CLUSTER=${BENCH_CLUSTER:-1}
COPIES=${BENCH_COPIES:-10}
RUNS=${BENCH_RUNS:-3}
KEEP_PIPELINE=${BENCH_KEEP_PIPELINE:-0}

"$REPO_ROOT/deploy/local/up.sh"
if ! command -v wrk >/dev/null; then
  log "installing wrk (apt, the load generator)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >"$LOGS/apt-wrk.log" 2>&1 \
    || die "apt-get install wrk failed (see $LOGS/apt-wrk.log)"
fi
cd "$REPO_ROOT"
log "building (release)"
cargo build --release --bins --quiet
BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# A namespace of this run's own, so that every scenario starts from the same state.
NS=bench$(date +%s)
WORK=$STATE/bench/$NS
mkdir -p "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
export ADMETRICS__KAFKA__TRAFFIC_TOPIC=$NS-ad-traffic
export ADMETRICS__KAFKA__EFFECTS_TOPIC=$NS-ad-effects
export ADMETRICS__KAFKA__DLQ_TOPIC=$NS-ad-dlq
export ADMETRICS__REDIS__KEY_PREFIX=$NS
export ADMETRICS__SPEED__GROUP_ID=$NS-speed
export ADMETRICS__BATCH__GROUP_ID=$NS-archiver
export ADMETRICS__BATCH__ARCHIVE_URL=$WORK/archive
export ADMETRICS__BATCH__ARCHIVE_MAX_AGE=1s
export ADMETRICS__CLICKHOUSE__ENABLED=false
export ADMETRICS__VALIDATION__MAX_AGE=40d
export ADMETRICS__STATE_DIR=$WORK
export ADMETRICS__MYSQL__URL=mysql://admetrics:admetrics@127.0.0.1:$MYSQL_PORT/admetrics_$NS
# One key at 20 000+ req/s: the per-key limit is lifted for the benchmark.
export ADMETRICS__SERVING__RATE_LIMIT_PER_SECOND=10000000
export ADMETRICS__SERVING__RATE_LIMIT_BURST=10000000
mariadb -h127.0.0.1 -P"$MYSQL_PORT" -uadmetrics -padmetrics -e "CREATE DATABASE admetrics_$NS"
"$BIN/speed-layer" migrate

# run NAME COMMAND...: a background process of this run, log under $WORK.
PIPELINE=()
run() { local name=$1; shift; "$@" >"$WORK/$name.log" 2>&1 & PIDS+=($!); }

ARCHIVER_METRICS=127.0.0.1:$(free_port)
run speed env ADMETRICS__SPEED__METRICS_LISTEN=127.0.0.1:$(free_port) "$BIN/speed-layer" run
PIPELINE+=($!)
run archiver "$BIN/batch-layer" archive --metrics-listen "$ARCHIVER_METRICS"
PIPELINE+=($!)

if [ "$CLUSTER" = 1 ]; then
  # Three masters, and a second speed layer writing the same topics into them.
  CLUSTER_NODES=()
  for i in 1 2 3; do
    while :; do p=$(free_port); [ "$p" -lt 55000 ] && break; done
    mkdir -p "$WORK/cluster/$p"
    run "redis-$p" redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
      --cluster-config-file "nodes-$p.conf" --appendonly yes --save "" --dir "$WORK/cluster/$p"
    CLUSTER_NODES+=("$p")
  done
  for p in "${CLUSTER_NODES[@]}"; do wait_for "redis $p" 20 redis-cli -p "$p" ping; done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_NODES[@]}") --cluster-yes >"$WORK/cluster-create.log" 2>&1 \
    || die "redis-cli --cluster create failed (see $WORK/cluster-create.log)"
  wait_for "redis cluster" 30 bash -c "redis-cli -p ${CLUSTER_NODES[0]} cluster info | grep -q cluster_state:ok"
  NODES_JSON=$(printf '"redis://127.0.0.1:%s/",' "${CLUSTER_NODES[@]}"); NODES_JSON="[${NODES_JSON%,}]"
  run speed-cluster env ADMETRICS__REDIS__CLUSTER_NODES="$NODES_JSON" ADMETRICS__SPEED__GROUP_ID=$NS-speed-cluster \
    ADMETRICS__SPEED__METRICS_LISTEN=127.0.0.1:$(free_port) "$BIN/speed-layer" run
  PIPELINE+=($!)
fi

log "replaying $DATA into $NS-*"
"$BIN/speed-layer" replay --data "$DATA" >"$WORK/replay.json"
read -r EVENTS SHIFT ADV LAST < <(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(s["events"], s["shift_days"], s["busiest"]["advertiser_id"], s["last_day"])' "$WORK/replay.json")
for k in $(seq 1 "$COPIES"); do
  log "replaying copy $k of $COPIES, $((3 * k)) days earlier"
  "$BIN/speed-layer" replay --data "$DATA" --copy "$k" --shift "$((SHIFT - 3 * k))" >"$WORK/replay-$k.json" 2>>"$WORK/replays.log"
  EVENTS=$((EVENTS + $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["events"])' "$WORK/replay-$k.json")))
done
log "waiting for the speed layer(s) and the archiver to hold all $EVENTS events"
"$BIN/speed-layer" status --wait --timeout 600 >/dev/null
if [ "$CLUSTER" = 1 ]; then
  ADMETRICS__REDIS__CLUSTER_NODES="$NODES_JSON" ADMETRICS__SPEED__GROUP_ID=$NS-speed-cluster \
    "$BIN/speed-layer" status --wait --timeout 600 >/dev/null
fi
archived() { curl -sf "http://$ARCHIVER_METRICS/metrics" | awk '/^admetrics_archive_rows_written_total/ {s += $2} END {print s + 0}'; }
archive_complete() { [ "$(archived)" -ge "$EVENTS" ]; }
wait_for "the archive ($EVENTS rows)" 300 archive_complete
log "archived $(archived) rows"
if [ "$KEEP_PIPELINE" != 1 ]; then
  log "stopping the pipeline processes (results stay in Redis and the archive)"
  kill "${PIPELINE[@]}" 2>/dev/null || true
fi

KEY=$("$BIN/serving-layer" keys create --advertiser "$ADV" --label bench)
start_server() { # NAME PORT [ENV...]
  local name=$1 port=$2; shift 2
  run "$name" env ADMETRICS__SERVING__LISTEN=127.0.0.1:$port "$@" "$BIN/serving-layer" serve
  wait_for "$name" 30 curl -sf "http://127.0.0.1:$port/healthz"
}
PORT=$(free_port)
start_server serving "$PORT"
if [ "$CLUSTER" = 1 ]; then
  CPORT=$(free_port)
  start_server serving-cluster "$CPORT" ADMETRICS__REDIS__CLUSTER_NODES="$NODES_JSON"
fi

day() { python3 -c 'import datetime,sys; print(datetime.date.fromisoformat(sys.argv[1]) + datetime.timedelta(days=int(sys.argv[2])))' "$1" "$2"; }
ALL_FROM=$(day "$LAST" -29)   # the 30 days ending on the data's last day (today)
FINAL_FROM=$(day "$LAST" -30) # the 30 days ending yesterday
FINAL_TO=$(day "$LAST" -1)

cat >"$WORK/report.lua" <<'EOF'
-- Prints one line of figures; the shell adds the scenario's name and the ratio.
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("FIGURES %.0f %.2f %.2f %.2f %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000,
    errors, summary.requests))
end
EOF

CEILING=
printf '\n%-28s %10s %8s %8s %9s %7s %8s\n' scenario "req/s" "p50 ms" "p99 ms" "p99.9 ms" errors "x healthz"
bench() { # NAME PORT PATH: a 2 s warm-up, then RUNS wrk runs; prints the medians
  local name=$1 port=$2 path=$3 url="http://127.0.0.1:$2$3" figures=()
  curl -sf -H "Authorization: Bearer $KEY" "$url" >"$WORK/$name.json" || die "GET $url failed"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "Authorization: Bearer $KEY" "$url" >/dev/null
  for _ in $(seq 1 "$RUNS"); do
    figures+=("$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -H "Authorization: Bearer $KEY" -s "$WORK/report.lua" "$url" | grep '^FIGURES')")
  done
  printf '%s\n' "${figures[@]}" >"$WORK/$name.figures"
  read -r rps p50 p99 p999 errors < <(python3 -c '
import statistics, sys
rows = [list(map(float, l.split()[1:])) for l in open(sys.argv[1]) if l.strip()]
med = lambda i: statistics.median(r[i] for r in rows)
print(f"{med(0):.0f} {med(1):.2f} {med(2):.2f} {med(3):.2f} {sum(r[4] for r in rows):.0f}")' "$WORK/$name.figures")
  [ -n "$CEILING" ] || CEILING=$rps
  printf '%-28s %10s %8s %8s %9s %7s %8s\n' "$name" "$rps" "$p50" "$p99" "$p999" "$errors" \
    "$(python3 -c "print(f'{$rps / $CEILING:.2f}')")"
}
M=/v1/advertisers/$ADV/metrics
bench healthz "$PORT" /healthz
bench provisional-30d "$PORT" "$M?from=$ALL_FROM&to=$LAST"
[ "$CLUSTER" = 1 ] && bench provisional-30d-cluster "$CPORT" "$M?from=$ALL_FROM&to=$LAST"

log "recomputing $FINAL_FROM..$FINAL_TO (batch layer)" >&2
"$BIN/batch-layer" recompute --from "$FINAL_FROM" --to "$FINAL_TO" >"$WORK/recompute.log" 2>&1 \
  || die "recompute failed (see $WORK/recompute.log)"
sleep 2 # one batch_staleness bound: the servers see the new runs
bench final-30d "$PORT" "$M?from=$FINAL_FROM&to=$FINAL_TO"
bench mixed-30d "$PORT" "$M?from=$ALL_FROM&to=$LAST"
bench mixed-30d-by-ad "$PORT" "$M?from=$ALL_FROM&to=$LAST&group_by=ad"
if [ "$CLUSTER" = 1 ]; then
  bench final-30d-cluster "$CPORT" "$M?from=$FINAL_FROM&to=$FINAL_TO"
  bench mixed-30d-cluster "$CPORT" "$M?from=$ALL_FROM&to=$LAST"
fi
python3 - "$WORK" <<'EOF'
import json, sys
w = sys.argv[1]
f = json.load(open(f"{w}/final-30d.json")); p = json.load(open(f"{w}/provisional-30d.json"))
print(f"\nanswers: provisional-30d {len(p['rows'])} rows, all provisional: {all(r['provisional'] for r in p['rows'])}; "
      f"final-30d {len(f['rows'])} rows, all final: {all(r['status'] == 'final' for r in f['rows'])}; "
      f"advertiser {f['advertiser_id']}, clicks over the range {p['totals']['metrics']['clicks']}")
EOF
log "logs and answers under $WORK"
