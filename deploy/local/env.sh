# Shared settings of the local stack scripts (sourced, not run).
# Everything the stack starts keeps its data, logs and pid files under $ADMETRICS_STATE_DIR.

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export ADMETRICS_STATE_DIR=${ADMETRICS_STATE_DIR:-$REPO_ROOT/var}
STATE=$ADMETRICS_STATE_DIR
RUN=$STATE/run
LOGS=$STATE/logs

KAFKA_PORT=${KAFKA_PORT:-9092}
KAFKA_PARTITIONS=${KAFKA_PARTITIONS:-8}
KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-9093}
KAFKA_VERSION=4.4.0                                   # deploy/local/kafka/pom.xml resolves it
KAFKA_HOME=${ADMETRICS_KAFKA_HOME:-$HOME/.cache/admetrics-kafka-$KAFKA_VERSION}  # its jars, outside the repository
KAFKA_HEAP=${KAFKA_HEAP:-512m}                        # bounded: it shares 2 cores and 24 GiB with the rest
REDIS_PORT=${REDIS_PORT:-6390}
MYSQL_PORT=${MYSQL_PORT:-3306}
CH_HTTP_PORT=${CH_HTTP_PORT:-8123}
CH_TCP_PORT=${CH_TCP_PORT:-9000}
TOPICS=(ad-traffic ad-effects ad-dlq)

# The binaries read these (see config/default.toml); keep them in step with the ports.
export ADMETRICS__STATE_DIR=$STATE
export ADMETRICS__KAFKA__BROKERS=127.0.0.1:$KAFKA_PORT
export ADMETRICS__KAFKA__PARTITIONS=$KAFKA_PARTITIONS
export ADMETRICS__REDIS__URL=redis://127.0.0.1:$REDIS_PORT/
export ADMETRICS__MYSQL__URL=mysql://admetrics:admetrics@127.0.0.1:$MYSQL_PORT/admetrics
export ADMETRICS__CLICKHOUSE__URL=http://127.0.0.1:$CH_HTTP_PORT

export PATH=$HOME/.cargo/bin:$PATH

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# port_open PORT: true when something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for NAME SECONDS COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$name did not answer within ${secs}s (logs: $LOGS)"
    sleep 0.5
  done
}

# start_bg NAME COMMAND...: runs COMMAND detached (own session, survives this script),
# output to $LOGS/NAME.log, pid (the command's own, via exec) in $RUN/NAME.pid.
start_bg() {
  local name=$1; shift
  setsid bash -c 'echo $$ >"$0"; exec "$@"' "$RUN/$name.pid" "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  for _ in $(seq 1 20); do [ -s "$RUN/$name.pid" ] && return 0; sleep 0.1; done
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
