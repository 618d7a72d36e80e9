#!/usr/bin/env bash
# Speed-layer core next to Flink, on the same generated file, in one run (issue 19).
#
#   deploy/local/bench-pipeline.sh            # 2 days x 1 M events (the standard load)
#   EVENTS_PER_DAY=5000000 deploy/local/bench-pipeline.sh
#
# 1. generates the standard load as JSON lines (../shared/bench/gen_events.py, cached
#    under $WORK) unless present;
# 2. `speed-layer bench pipeline --runs 5` on it (one core; median of 5; state per
#    tracked click and per seen id);
# 3. the Flink 2.3 baseline (../shared/bench/flink/run.sh, p=1) on an empty input and on
#    the same files, RUNS times each; Flink's events/s = events / (job runtime - empty
#    job runtime), its fixed start-up excluded as the bench README does;
# 4. prints both events/s and the ratio.
# Needs Java 17 (Flink) and Python 3 (generator); the release build of speed-layer.
set -euo pipefail
source "$(dirname "$0")/env.sh"
SHARED=${SHARED:-$REPO_ROOT/../shared}
WORK=${WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/admetrics-bench/flink}
DAYS=${DAYS:-2}
EVENTS_PER_DAY=${EVENTS_PER_DAY:-1000000}
RUNS=${RUNS:-3}
INPUT_DIR=${INPUT_DIR:-$WORK/load-${DAYS}x${EVENTS_PER_DAY}}
export WORK
target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}

cargo build --release -q -p speed-layer
bin=$target/release/speed-layer

# The generator needs duckdb; the Flink script reuses this venv (its own layout).
venv=$WORK/venv
if ! ls "$INPUT_DIR"/*.jsonl >/dev/null 2>&1; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -c "import duckdb, pyarrow" 2>/dev/null || "$venv/bin/pip" install -q duckdb pyarrow
  "$venv/bin/python" "$SHARED/bench/gen_events.py" --out "$INPUT_DIR" --days "$DAYS" \
    --events-per-day "$EVENTS_PER_DAY" --format jsonl >&2
fi
events=$(cat "$INPUT_DIR"/*.jsonl | wc -l)
echo "input: $INPUT_DIR ($events events)"

project=$("$bin" bench pipeline --runs 5 "$INPUT_DIR"/*.jsonl)
project_eps=$(python3 -c 'import json,sys; print(round(json.loads(sys.argv[1])["events_per_second"]))' "$project")
echo "$project"

mkdir -p "$WORK/empty" && : > "$WORK/empty/events.jsonl"
runtime() { # INPUT -> median job_net_runtime_ms of RUNS runs
  for _ in $(seq 1 "$RUNS"); do
    INPUT_DIR=$1 PARALLELISM=1 "$SHARED/bench/flink/run.sh" run 2>/dev/null |
      sed -n 's/.*job_net_runtime_ms=\([0-9]*\).*/\1/p'
  done | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
}
empty_ms=$(runtime "$WORK/empty")
full_ms=$(runtime "$INPUT_DIR")
python3 - "$events" "$project_eps" "$empty_ms" "$full_ms" <<'EOF'
import sys
events, project, empty_ms, full_ms = (int(v) for v in sys.argv[1:])
flink = events / max(full_ms - empty_ms, 1) * 1000
print(f"speed-layer core (bench pipeline, 1 core, median of 5): {project:,.0f} events/s")
print(f"Flink 2.3 SQL p=1 (median job runtime {full_ms} ms - empty job {empty_ms} ms): {flink:,.0f} events/s")
print(f"ratio: {project / flink:.1f}x")
EOF
