#!/usr/bin/env bash
# Brings the local stack up from nothing, idempotently: installs what is missing
# (Debian packages, the Apache Kafka broker from Maven Central), starts what is not
# running on loopback with data and logs
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
if ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
  log "installing openjdk-17-jre-headless maven (apt, for the Kafka broker)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends openjdk-17-jre-headless maven \
    >"$LOGS/apt-java.log" 2>&1 || die "apt-get install openjdk-17-jre-headless maven failed (see $LOGS/apt-java.log)"
fi
# The broker's jars: resolved once from Maven Central into a cache outside the
# repository (deploy/local/kafka/pom.xml; version in env.sh), reused when present.
if [ ! -f "$KAFKA_HOME/complete" ]; then
  log "resolving Apache Kafka $KAFKA_VERSION and its dependencies from Maven Central into $KAFKA_HOME"
  rm -rf "$KAFKA_HOME/libs"
  mvn -q -B -f "$REPO_ROOT/deploy/local/kafka/pom.xml" -Dkafka.version="$KAFKA_VERSION" \
    dependency:copy-dependencies -DoutputDirectory="$KAFKA_HOME/libs" >"$LOGS/kafka-resolve.log" 2>&1 \
    || die "resolving the Kafka broker failed (see $LOGS/kafka-resolve.log)"
  touch "$KAFKA_HOME/complete"
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

# --- Kafka (Apache Kafka, one KRaft node: broker and controller in one JVM) ----------
kafka_tool() { java -Xmx256m -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$KAFKA_HOME/libs/*" "$@"; }
if ! port_open "$KAFKA_PORT"; then
  mkdir -p "$STATE/kafka/data"
  cat >"$STATE/kafka/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$STATE/kafka/data
num.partitions=$KAFKA_PARTITIONS
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
PROPERTIES
  if [ ! -f "$STATE/kafka/data/meta.properties" ]; then
    log "formatting Kafka storage under $STATE/kafka/data (once)"
    kafka_tool kafka.tools.StorageTool format --standalone -t "$(kafka_tool kafka.tools.StorageTool random-uuid)" \
      -c "$STATE/kafka/server.properties" >"$LOGS/kafka-format.log" 2>&1 \
      || die "formatting Kafka storage failed (see $LOGS/kafka-format.log)"
  fi
  log "starting Apache Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (KRaft, heap $KAFKA_HEAP, data in $STATE/kafka)"
  start_bg kafka java "-Xms$KAFKA_HEAP" "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -Dorg.slf4j.simpleLogger.log.kafka.server.KafkaRaftServer=info -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$STATE/kafka/server.properties"
  wait_for kafka 90 kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list
fi
# Topics through the admin API (auto-creation is off).
existing=$(kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list)
for t in "${TOPICS[@]}"; do
  if ! grep -qx "$t" <<<"$existing"; then
    log "creating topic $t ($KAFKA_PARTITIONS partitions)"
    kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" --create --if-not-exists \
      --topic "$t" --partitions "$KAFKA_PARTITIONS" --replication-factor 1 >/dev/null
  fi
done

log "local stack up: kafka 127.0.0.1:$KAFKA_PORT, redis :$REDIS_PORT, mariadb :$MYSQL_PORT, clickhouse :$CH_HTTP_PORT; state in $STATE"
