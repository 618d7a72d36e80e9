#!/usr/bin/env bash
# Stops what deploy/local/up.sh started (and the demo's services); data stays in the
# state directory. Services that were already running before up.sh are left alone.
set -uo pipefail
source "$(dirname "$0")/env.sh"

stop_pid() { # NAME PIDFILE
  local name=$1 f=$2
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    log "stopping $name (pid $pid)"
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && { log "$name did not stop; killing"; kill -9 "$pid"; }
  fi
  rm -f "$f"
}

stop_pid serving-layer "$RUN/serving-layer.pid"
stop_pid speed-layer "$RUN/speed-layer.pid"
stop_pid archiver "$RUN/archiver.pid"
stop_pid kafka "$RUN/kafka.pid"
stop_pid tansu "$RUN/tansu.pid"  # the broker of earlier versions of this script
stop_pid clickhouse "$RUN/clickhouse.pid"
stop_pid mariadb "$RUN/mariadb.pid"
if [ -f "$RUN/redis.pid" ]; then
  log "stopping redis :$REDIS_PORT (AOF is fsynced on shutdown)"
  redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true
  rm -f "$RUN/redis.pid"
fi
log "local stack stopped; data kept in $STATE"
