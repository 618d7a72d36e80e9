#!/usr/bin/env bash
# The main job end to end on the real data set, from nothing:
#   local stack up -> build -> replay the TalkingData sample into MySQL and Kafka ->
#   speed layer -> Redis -> serving layer -> print a real API answer for the busiest
#   advertiser-day (provisional), next to the same numbers counted straight from the
#   file -> archiver -> Parquet -> batch run of every day of the data set that has
#   closed -> the same answer again (final) and each day's reconciliation (speed vs
#   batch).
# The speed layer, the archiver and the server keep running afterwards
# (deploy/local/down.sh stops everything). Re-running is safe: replayed events are
# deduplicated by event_id, and a batch run replaces a day's results.
set -euo pipefail
source "$(dirname "$0")/env.sh"
DATA=${ADMETRICS_DATASET:-$REPO_ROOT/../shared/data/talkingdata_train_sample.csv}
[ -f "$DATA" ] || die "data set not found at $DATA (set ADMETRICS_DATASET)"
started=$SECONDS

"$REPO_ROOT/deploy/local/up.sh"
cd "$REPO_ROOT"
log "building (release)"
cargo build --release --bins --quiet
BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release

"$BIN/speed-layer" migrate

start() { # NAME BINARY ARGS...: start a service in the background unless it runs
  local name=$1 binary=$2; shift 2
  local pidf="$RUN/$name.pid"
  if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then return; fi
  log "starting $name (log: $LOGS/$name.log)"
  start_bg "$name" "$BIN/$binary" "$@"
}
start speed-layer speed-layer run
start serving-layer serving-layer serve
start archiver batch-layer archive

log "replaying $DATA"
"$BIN/speed-layer" replay --data "$DATA" >"$STATE/replay.json"
log "replay: $(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%d events in %.1f s = %.0f events/s, days %s..%s (shifted %d days)" % (s["events"], s["seconds"], s["events_per_second"], s["first_day"], s["last_day"], s["shift_days"]))' "$STATE/replay.json")"

log "waiting for the speed layer to consume and write every window"
"$BIN/speed-layer" status --wait --timeout 600 >/dev/null

read -r ADV DAY CLICKS COST ORDERS < <(python3 -c 'import json,sys; b=json.load(open(sys.argv[1]))["busiest"]; print(b["advertiser_id"], b["day"], b["clicks"], b["cost_micros"], b["orders"])' "$STATE/replay.json")
KEY=$("$BIN/serving-layer" keys create --advertiser "$ADV" --label demo)
wait_for serving-layer 30 curl -sf "http://127.0.0.1:8080/healthz"
URL="http://127.0.0.1:8080/v1/advertisers/$ADV/metrics?from=$DAY&to=$DAY"
echo
echo "GET $URL   (speed layer: provisional)"
curl -sf -H "Authorization: Bearer $KEY" "$URL" | python3 -m json.tool
echo
echo "Counted straight from the data set file for advertiser $ADV on $DAY: clicks=$CLICKS cost_micros=$COST orders=$ORDERS"

# The batch run: every day of the data set that has closed (ended in UTC, the
# advertisers' zone, plus batch.late_allowance, 1 h); a day still open is left to the
# scheduler (batch-layer schedule), which finalizes it once it closes.
log "waiting for the archiver to archive every partition to its end offset"
"$BIN/batch-layer" archive-status --wait --timeout 600 | tail -1
read -r FIRST LAST TO < <(python3 -c '
import datetime as dt, json, sys
s = json.load(open(sys.argv[1]))
closed = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).date() - dt.timedelta(days=1)
print(s["first_day"], s["last_day"], min(dt.date.fromisoformat(s["last_day"]), closed))' "$STATE/replay.json")
if [[ "$TO" < "$FIRST" ]]; then
  log "no day of the data set ($FIRST..$LAST) has closed yet; batch-layer schedule finalizes them once they do"
else
  [ "$TO" = "$LAST" ] || log "$LAST has not closed yet (it closes 1 h after it ends); the batch run covers $FIRST..$TO"
  log "batch run: recompute $FIRST..$TO from the archive, then reconcile each day with the speed layer"
  "$BIN/batch-layer" recompute --from "$FIRST" --to "$TO"
  echo
  echo "GET $URL   (after the batch run)"
  sleep 1.5  # the server picks up a new batch run within serving.batch_staleness (1 s)
  curl -sf -H "Authorization: Bearer $KEY" "$URL" | python3 -m json.tool
fi
echo "API key for advertiser $ADV: $KEY"
log "done in $((SECONDS - started)) s; services keep running (deploy/local/down.sh stops them)"
