#!/usr/bin/env bash
# The nightly recompute next to DuckDB, on the same generated day, in one run (issue 16).
#
#   deploy/local/bench-recompute.sh                              # 1 M events/day
#   EVENTS_PER_DAY=10000000 deploy/local/bench-recompute.sh      # 10 M events/day
#
# 1. generates the standard load (../shared/bench/gen_events.py, 15 days of Parquet)
#    unless cached under $WORK;
# 2. `batch-layer bench prepare`: the archive layout the archiver writes (8 partitions,
#    one file per topic, partition and hour, batch.archive_compression), unless
#    cached; not timed;
# 3. a warm-up pair, then RUNS pairs, one after the other: `batch-layer bench run --day $DAY --threads 2`
#    and the DuckDB baseline (../shared/bench/duckdb/run.py --threads 2), each a fresh
#    process under /usr/bin/time -v (whole-process wall time and peak RSS: DuckDB's
#    includes Python's start, as in the bench README);
# 4. checks that the project's per-ad and unattributed rows equal DuckDB's;
# 5. prints input rows (the day's rows + the 14 previous days' clicks, counted by both),
#    the medians of wall time, rows/s and peak RSS, and the ratios.
# Needs Python 3 (generator, DuckDB) and builds the release batch-layer.
set -euo pipefail
source "$(dirname "$0")/env.sh"
SHARED=${SHARED:-$REPO_ROOT/../shared}
WORK=${WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/admetrics-bench}
EVENTS_PER_DAY=${EVENTS_PER_DAY:-1000000}
DAY=${DAY:-2026-11-15}
RUNS=${RUNS:-3}
THREADS=${THREADS:-2}
DUCKDB_VERSION=${DUCKDB_VERSION:-2.0.1}
INPUT_DIR=$WORK/load-15x$EVENTS_PER_DAY
# The archive as the archiver writes it, in batch.archive_compression (default lz4).
CODEC=${ADMETRICS__BATCH__ARCHIVE_COMPRESSION:-lz4}
ARCHIVE=$WORK/archive-15x$EVENTS_PER_DAY-$CODEC
OUT=$WORK/recompute-out
target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}

cargo build --release -q -p batch-layer
bin=$target/release/batch-layer

venv=$WORK/duckvenv
if ! "$venv/bin/python" -c "import duckdb, pyarrow; assert duckdb.__version__ == '$DUCKDB_VERSION'" 2>/dev/null; then
  log "installing duckdb $DUCKDB_VERSION and pyarrow into $venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "duckdb==$DUCKDB_VERSION" pyarrow
fi
if ! ls "$INPUT_DIR"/events-*.parquet >/dev/null 2>&1; then
  log "generating 15 days x $EVENTS_PER_DAY events into $INPUT_DIR"
  "$venv/bin/python" "$SHARED/bench/gen_events.py" --out "$INPUT_DIR" --days 15 \
    --events-per-day "$EVENTS_PER_DAY" >&2
fi
if [ ! -f "$ARCHIVE/.prepared" ]; then
  log "preparing the archive layout in $ARCHIVE"
  rm -rf "$ARCHIVE"
  "$bin" bench prepare --input "$INPUT_DIR" --archive "$ARCHIVE" >&2
  touch "$ARCHIVE/.prepared"
fi

mkdir -p "$OUT/duckdb"
tsv=$OUT/runs-$EVENTS_PER_DAY.tsv
: >"$tsv"
timed() { # NAME COMMAND... -> appends "NAME wall_s maxrss_kib" to $tsv
  local name=$1; shift
  /usr/bin/time -v -o "$OUT/time.txt" "$@" >"$OUT/$name.stdout" 2>"$OUT/$name.stderr" ||
    die "$name failed: $(tail -3 "$OUT/$name.stderr")"
  awk -v n="$name" -F': ' '
    /Elapsed \(wall clock\)/ { k = split($2, p, ":"); s = 0; for (i = 1; i <= k; i++) s = s * 60 + p[i] }
    /Maximum resident set size/ { rss = $2 }
    END { print n "\t" s "\t" rss }' "$OUT/time.txt" >>"$tsv"
}
# One pair first, not counted: the page cache then holds both inputs for every run.
log "warm-up: project, then DuckDB (not counted)"
"$bin" bench run --archive "$ARCHIVE" --day "$DAY" --threads "$THREADS" >/dev/null 2>&1
"$venv/bin/python" "$SHARED/bench/duckdb/run.py" --data "$INPUT_DIR" --day "$DAY" \
  --out "$OUT/duckdb/ad_metrics.csv" --unattributed-out "$OUT/duckdb/unattributed.csv" --threads "$THREADS" 2>/dev/null
for r in $(seq 1 "$RUNS"); do
  log "run $r of $RUNS: project, then DuckDB"
  timed project "$bin" bench run --archive "$ARCHIVE" --day "$DAY" --threads "$THREADS" --out "$OUT/project"
  timed duckdb "$venv/bin/python" "$SHARED/bench/duckdb/run.py" --data "$INPUT_DIR" --day "$DAY" \
    --out "$OUT/duckdb/ad_metrics.csv" --unattributed-out "$OUT/duckdb/unattributed.csv" --threads "$THREADS"
done

"$venv/bin/python" - "$OUT" "$tsv" "$INPUT_DIR" "$DAY" "$EVENTS_PER_DAY" <<'PY'
import csv, datetime as dt, glob, json, os, statistics, sys
import duckdb
out, tsv, data, day, per_day = sys.argv[1], sys.argv[2], sys.argv[3], dt.date.fromisoformat(sys.argv[4]), int(sys.argv[5])

def rows(path, key):
    with open(path) as f:
        return {tuple(r[k] for k in key): {k: int(v) for k, v in r.items() if k not in ("day",) + key}
                for r in csv.DictReader(f)}
for name, key in (("ad_metrics.csv", ("ad_id",)), ("unattributed.csv", ("advertiser_id",))):
    p, d = rows(f"{out}/project/{name}", key), rows(f"{out}/duckdb/{name}", key)
    if p != d:
        diff = [k for k in sorted(set(p) | set(d)) if p.get(k) != d.get(k)]
        sys.exit(f"{name}: the project's rows differ from DuckDB's for {len(diff)} keys, e.g. {diff[:3]}: "
                 f"project {p.get(diff[0])} duckdb {d.get(diff[0])}")
    print(f"{name}: {len(p)} rows, equal to DuckDB's")

# Input rows as the DuckDB bench counts them: the day's rows + lookback clicks.
d0 = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
g = lambda d: os.path.join(data, f"events-{d.isoformat()}*.parquet")
lb = [g(day - dt.timedelta(days=k)) for k in range(14, 0, -1) if glob.glob(g(day - dt.timedelta(days=k)))]
con = duckdb.connect()
n = con.execute(f"SELECT count(*) FROM read_parquet('{g(day)}') WHERE ts >= {d0} AND ts < {d0 + 86400000}").fetchone()[0]
if lb:
    n += con.execute(f"SELECT count(*) FROM read_parquet({lb}) WHERE kind = 'click'").fetchone()[0]
with open(f"{out}/project.stdout") as f:
    project_rows = json.load(f)["input_rows"]
if project_rows != n:
    sys.exit(f"input rows differ: the project read {project_rows}, DuckDB's definition gives {n}")

runs = {"project": [], "duckdb": []}
with open(tsv) as f:
    for name, wall, rss in csv.reader(f, delimiter="\t"):
        runs[name].append((float(wall), int(rss)))
med = lambda xs: statistics.median(xs)
fig = {}
for name, rs in runs.items():
    walls = [w for w, _ in rs]
    fig[name] = (med(walls), max(r for _, r in rs) / 1024)
    print(f"{name:8} wall s {' '.join(f'{w:.2f}' for w in walls)} (median {fig[name][0]:.2f}): "
          f"{n / fig[name][0] / 1e6:.2f} M input rows/s, peak RSS {fig[name][1]:.0f} MiB")
ratios = sorted(d / p for (p, _), (d, _) in zip(runs["project"], runs["duckdb"]))
print(f"{per_day:,} events/day, day {day}, {n:,} input rows, duckdb {duckdb.__version__}, {len(ratios)} pairs")
print(f"speed: {fig['duckdb'][0] / fig['project'][0]:.2f}x DuckDB's rows/s (median of pairs {med(ratios):.2f}x, "
      f"range {ratios[0]:.2f}-{ratios[-1]:.2f}x); peak RSS: {fig['project'][1] / fig['duckdb'][1] * 100:.0f} % of DuckDB's")
PY
