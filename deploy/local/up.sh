#!/usr/bin/env bash
# Brings the local stack up from nothing, idempotently: installs what is missing
# (Debian packages, tansu), starts what is not running on loopback with data and logs
# under $ADMETRICS_STATE_DIR (default ./var), waits until each answers, and creates
# the Kafka topics, the MySQL database/user/schema and the ClickHouse database/tables.
# Running it twice changes nothing. deploy/local/down.sh stops what it started.
set -euo pipefail
source "$(dirname "$0")/env.sh"
mkdir -p "$RUN" "$LOGS" "$STATE/redis" "$STATE/kafka" "$STATE/clickhouse"

# --- install -------------------------------------------------------------------
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || missing+=(mariadb-server)
command -v mariadb >/dev/null || missing+=(mariadb-client)
command -v clickhouse-server >/dev/null || [ -x /usr/sbin/clickhouse-server ] || missing+=(clickhouse-server)
command -v clickhouse-client >/dev/null || missing+=(clickhouse-client)
command -v curl >/dev/null || missing+=(curl)
command -v redis-cli >/dev/null || missing+=(redis-tools)  # also creates the test's Redis Cluster
# Building: librdkafka with TLS/SASL links the system OpenSSL.
command -v pkg-config >/dev/null || missing+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} (apt)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # policy-rc.d may forbid starting services at install; this script starts its own.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$LOGS/apt.log" 2>&1 \
    || die "apt-get install ${missing[*]} failed (see $LOGS/apt.log)"
fi
if ! command -v tansu >/dev/null; then
  log "installing tansu 0.6.0 from crates.io (about 10-15 minutes on 2 cores, once)"
  cargo install tansu --locked --version 0.6.0 --features dynostore,libsql >"$LOGS/tansu-install.log" 2>&1 \
    || die "cargo install tansu failed (see $LOGS/tansu-install.log)"
fi

# --- Redis (the product's own: AOF, fsync on every write) ----------------------------
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  log "starting redis on 127.0.0.1:$REDIS_PORT (appendonly, data in $STATE/redis)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$STATE/redis" \
    --appendonly yes --appendfsync always --save "" \
    --daemonize yes --pidfile "$RUN/redis.pid" --logfile "$LOGS/redis.log"
fi
wait_for redis 30 redis-cli -p "$REDIS_PORT" ping

# --- MariaDB ---------------------------------------------------------------------
MYSQL_ROOT=(mariadb -h127.0.0.1 -P"$MYSQL_PORT" -uroot)
if ! "${MYSQL_ROOT[@]}" -e 'SELECT 1' >/dev/null 2>&1; then
  if port_open "$MYSQL_PORT"; then
    die "something listens on $MYSQL_PORT but root without password cannot log in"
  fi
  log "starting MariaDB on 127.0.0.1:$MYSQL_PORT (data in $STATE/mysql)"
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --no-defaults --user="$(id -un)" --datadir="$STATE/mysql" --auth-root-authentication-method=normal \
      >"$LOGS/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOGS/mariadb-install.log)"
  fi
  start_bg mariadb mariadbd --no-defaults --user="$(id -un)" --datadir="$STATE/mysql" --port="$MYSQL_PORT" \
    --bind-address=127.0.0.1 --socket="$RUN/mysqld.sock" --log-error="$LOGS/mariadb.err"
  wait_for mariadb 60 "${MYSQL_ROOT[@]}" -e 'SELECT 1'
fi
"${MYSQL_ROOT[@]}" <<'SQL'
CREATE DATABASE IF NOT EXISTS admetrics;
CREATE USER IF NOT EXISTS 'admetrics'@'%' IDENTIFIED BY 'admetrics';
CREATE USER IF NOT EXISTS 'admetrics'@'localhost' IDENTIFIED BY 'admetrics';
-- The wildcard also covers the per-test databases (admetrics_t_*).
GRANT ALL PRIVILEGES ON `admetrics%`.* TO 'admetrics'@'%';
GRANT ALL PRIVILEGES ON `admetrics%`.* TO 'admetrics'@'localhost';
SQL
mariadb -h127.0.0.1 -P"$MYSQL_PORT" -uadmetrics -padmetrics admetrics <"$REPO_ROOT/deploy/sql/mysql.sql"

# --- ClickHouse -------------------------------------------------------------------
if ! curl -sf "http://127.0.0.1:$CH_HTTP_PORT/ping" >/dev/null; then
  log "starting ClickHouse on 127.0.0.1:$CH_HTTP_PORT (data in $STATE/clickhouse)"
  sed -e "s#@STATE@#$STATE#g" -e "s#@HTTP_PORT@#$CH_HTTP_PORT#g" -e "s#@TCP_PORT@#$CH_TCP_PORT#g" \
    "$REPO_ROOT/deploy/local/clickhouse.xml" >"$STATE/clickhouse/config.xml"
  ( cd "$STATE/clickhouse" && start_bg clickhouse clickhouse-server --config-file="$STATE/clickhouse/config.xml" )
  wait_for clickhouse 60 curl -sf "http://127.0.0.1:$CH_HTTP_PORT/ping"
fi
clickhouse-client --port "$CH_TCP_PORT" --query "CREATE DATABASE IF NOT EXISTS admetrics"
clickhouse-client --port "$CH_TCP_PORT" --database admetrics --multiquery <"$REPO_ROOT/deploy/sql/clickhouse.sql"

# --- Kafka (tansu) -----------------------------------------------------------------
if ! port_open "$KAFKA_PORT"; then
  log "starting tansu on 127.0.0.1:$KAFKA_PORT (storage $KAFKA_STORAGE)"
  ( cd "$STATE/kafka" && start_bg tansu tansu broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine "$KAFKA_STORAGE" )
  wait_for tansu 30 port_open "$KAFKA_PORT"
fi
existing=$(tansu topic list --broker "tcp://127.0.0.1:$KAFKA_PORT" 2>/dev/null || echo '[]')
for t in "${TOPICS[@]}"; do
  if ! grep -q "\"name\":\"$t\"" <<<"$existing"; then
    log "creating topic $t ($KAFKA_PARTITIONS partitions)"
    tansu topic create "$t" --partitions "$KAFKA_PARTITIONS" --broker "tcp://127.0.0.1:$KAFKA_PORT" >/dev/null
  fi
done

log "local stack up: kafka 127.0.0.1:$KAFKA_PORT, redis :$REDIS_PORT, mariadb :$MYSQL_PORT, clickhouse :$CH_HTTP_PORT; state in $STATE"
