#!/usr/bin/env bash
# Real Apache Kafka broker (KRaft, single node, combined broker+controller)
# for the integration tests. Driven by tests/common/kafka.rs and by the
# benchmarks (benches/common.sh); usable by hand.
#
#   broker.sh fetch
#       Resolve the broker jars with Maven (tests/kafka/pom.xml) into a cache
#       dir, once, and print the libs dir. Idempotent: a marker holding the
#       pom's checksum makes later calls return at once (offline too); a
#       changed pom re-fetches. Cache dir:
#       ${UNTAKEN_KAFKA_CACHE:-$HOME/.cache/untaken/kafka-$KAFKA_VERSION}
#
#   broker.sh check
#       Print the libs dir if the jars are fetched; else exit 1. Fetches nothing.
#
#   broker.sh props WORKDIR PORT CONTROLLER_PORT [KEY=VALUE...]
#       Write WORKDIR/server.properties: the one single-node KRaft setup of the
#       tests and the benchmarks (PLAINTEXT on 127.0.0.1:PORT, the controller on
#       127.0.0.1:CONTROLLER_PORT, log.dirs WORKDIR/data). Each KEY=VALUE
#       replaces that key's default or adds it, e.g. num.partitions=3.
#
#   broker.sh format WORKDIR CLUSTER_ID
#       Format the KRaft storage named by WORKDIR/server.properties
#       (kafka.tools.StorageTool format --standalone). No-op if the log dir
#       already holds meta.properties, so a restart keeps its data.
#
#   broker.sh configs BOOTSTRAP ARGS...
#       Kafka's own kafka-configs tool (kafka.admin.ConfigCommand) against
#       BOOTSTRAP, e.g. a client quota:
#       configs 127.0.0.1:9092 --alter --add-config producer_byte_rate=100000
#         --entity-type clients --entity-name untaken
#
#   broker.sh run WORKDIR [WATCH_PID]
#       exec the broker in the foreground: java -cp "$LIBS/*" kafka.Kafka
#       WORKDIR/server.properties, logging to WORKDIR/broker.log. Because it
#       execs, the pid of this script becomes the pid of java, so the caller
#       can SIGKILL the broker directly. If WATCH_PID is given, a small
#       watcher started before the exec checks once a second that WATCH_PID
#       (the test process) is alive; when it is gone, the watcher SIGKILLs
#       the broker and removes WORKDIR, so no java is left running after the
#       tests, even if the test process itself was SIGKILLed or never ran its
#       destructors (a broker held in a `static` is never dropped).
#
# Environment: JAVA_HOME (else `java` on PATH), UNTAKEN_KAFKA_CACHE,
# UNTAKEN_KAFKA_HEAP (default 512m), UNTAKEN_KAFKA_JAVA_OPTS (extra JVM flags).
set -euo pipefail

KAFKA_VERSION=4.1.1 # keep in step with kafka.version in pom.xml
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
POM="$HERE/pom.xml"
CACHE="${UNTAKEN_KAFKA_CACHE:-${HOME:-/tmp}/.cache/untaken/kafka-$KAFKA_VERSION}"
LIBS="$CACHE/libs"
MARKER="$CACHE/.fetched"

die() {
  echo "broker.sh: $*" >&2
  exit 1
}

java_bin() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    echo "$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    command -v java
  else
    die "java not found (need Java 17+ on PATH or JAVA_HOME) to run the Kafka test broker"
  fi
}

pom_sum() {
  sha256sum "$POM" | cut -d' ' -f1
}

fetched() {
  [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(pom_sum)" ]] &&
    compgen -G "$LIBS/kafka_2.13-*.jar" >/dev/null
}

cmd_fetch() {
  if fetched; then
    echo "$LIBS"
    return 0
  fi
  command -v mvn >/dev/null 2>&1 ||
    die "mvn not found: Maven is needed once to fetch the Kafka $KAFKA_VERSION jars into $CACHE"
  java_bin >/dev/null
  mkdir -p "$CACHE"
  # Several test processes may fetch at once: serialise on a lock file.
  exec 9>"$CACHE/.lock"
  local locked=""
  if command -v flock >/dev/null 2>&1; then
    flock -w 900 9 || die "timed out waiting for the fetch lock $CACHE/.lock"
    locked=1
  fi
  if fetched; then # another process finished while we waited
    echo "$LIBS"
    return 0
  fi
  if [[ -n "$locked" ]]; then
    rm -rf "$CACHE"/libs.tmp.* # left by an interrupted fetch; none is running
  fi
  local tmp="$CACHE/libs.tmp.$$" log="$CACHE/fetch.log" attempt ok="" force=""
  for attempt in 1 2; do
    rm -rf "$tmp"
    # The retry passes -U: Maven caches a failed download and would not
    # otherwise try the registry again.
    if mvn -B -q $force -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$tmp" >"$log" 2>&1; then
      ok=1
      break
    fi
    echo "broker.sh: mvn fetch attempt $attempt failed (log: $log)" >&2
    force=-U
    sleep 2
  done
  if [[ -z "$ok" ]]; then
    tail -n 40 "$log" >&2 || true
    rm -rf "$tmp"
    die "could not fetch the Kafka $KAFKA_VERSION jars with Maven (see $log)"
  fi
  compgen -G "$tmp/kafka_2.13-*.jar" >/dev/null ||
    die "mvn succeeded but no kafka_2.13 jar in $tmp"
  rm -rf "$LIBS"
  mv "$tmp" "$LIBS"
  pom_sum >"$MARKER"
  echo "$LIBS"
}

server_props() {
  local workdir="$1"
  [[ -f "$workdir/server.properties" ]] || die "no $workdir/server.properties"
  echo "$workdir/server.properties"
}

jvm_opts() {
  local workdir="$1"
  local heap="${UNTAKEN_KAFKA_HEAP:-512m}"
  # Small heap and the serial collector: the machine is small and shared.
  # shellcheck disable=SC2206
  JVM_OPTS=(-Xmx"$heap" -Xms64m -XX:+UseSerialGC -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$HERE/log4j2.xml"
    -Duntaken.kafka.log="$workdir/broker.log"
    ${UNTAKEN_KAFKA_JAVA_OPTS:-})
}

cmd_props() {
  local usage="usage: broker.sh props WORKDIR PORT CONTROLLER_PORT [KEY=VALUE...]"
  local workdir="${1:?$usage}" port="${2:?$usage}" cport="${3:?$usage}"
  shift 3
  [[ "$port" =~ ^[0-9]+$ && "$cport" =~ ^[0-9]+$ ]] || die "$usage (ports are numbers)"
  mkdir -p "$workdir"
  local defaults=(
    node.id=1
    process.roles=broker,controller
    "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
    "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
    controller.listener.names=CONTROLLER
    inter.broker.listener.name=PLAINTEXT
    listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
    "controller.quorum.bootstrap.servers=127.0.0.1:$cport"
    "log.dirs=$workdir/data"
    num.partitions=1
    default.replication.factor=1
    auto.create.topics.enable=true
    offsets.topic.replication.factor=1
    offsets.topic.num.partitions=1
    transaction.state.log.replication.factor=1
    transaction.state.log.min.isr=1
    transaction.state.log.num.partitions=1
    share.coordinator.state.topic.replication.factor=1
    share.coordinator.state.topic.min.isr=1
    min.insync.replicas=1
    group.initial.rebalance.delay.ms=0
    # After a SIGKILL the restarted broker cannot register until the controller
    # expires the old session; keep that short.
    broker.heartbeat.interval.ms=500
    broker.session.timeout.ms=3000
    num.network.threads=2
    num.io.threads=2
    num.recovery.threads.per.data.dir=1
  )
  local kv key out=()
  for kv in "$@"; do
    [[ "$kv" == ?*=* ]] || die "props: '$kv' is not KEY=VALUE"
  done
  for kv in "${defaults[@]}" "$@"; do
    key="${kv%%=*}"
    # A later KEY=VALUE replaces the earlier one.
    local i kept=()
    for i in "${out[@]}"; do [[ "${i%%=*}" == "$key" ]] || kept+=("$i"); done
    out=("${kept[@]}" "$kv")
  done
  printf '%s\n' "${out[@]}" >"$workdir/server.properties"
}

cmd_format() {
  local workdir="${1:?usage: broker.sh format WORKDIR CLUSTER_ID}"
  local cluster_id="${2:?usage: broker.sh format WORKDIR CLUSTER_ID}"
  local props logdir java
  props="$(server_props "$workdir")"
  logdir="$(sed -n 's/^log\.dirs=//p' "$props" | head -n1)"
  if [[ -n "$logdir" && -f "$logdir/meta.properties" ]]; then
    return 0 # already formatted: keep the data
  fi
  java="$(java_bin)"
  cmd_fetch >/dev/null
  jvm_opts "$workdir"
  "$java" "${JVM_OPTS[@]}" -cp "$LIBS/*" kafka.tools.StorageTool \
    format --standalone -t "$cluster_id" -c "$props"
}

cmd_run() {
  local workdir="${1:?usage: broker.sh run WORKDIR [WATCH_PID]}"
  local watch="${2:-}"
  local props java
  props="$(server_props "$workdir")"
  java="$(java_bin)"
  fetched || die "Kafka jars not fetched yet: run '$0 fetch' first"
  jvm_opts "$workdir"
  if [[ -n "$watch" ]]; then
    local self=$$ # stays the broker's pid after the exec below
    (
      trap '' INT TERM HUP
      while kill -0 "$self" 2>/dev/null; do
        if ! kill -0 "$watch" 2>/dev/null; then
          kill -9 "$self" 2>/dev/null || true
          sleep 0.5
          rm -rf "$workdir"
          exit 0
        fi
        sleep 1
      done
    ) </dev/null >/dev/null 2>&1 &
  fi
  exec "$java" "${JVM_OPTS[@]}" -cp "$LIBS/*" kafka.Kafka "$props"
}

cmd_configs() {
  local bootstrap="${1:?usage: broker.sh configs BOOTSTRAP ARGS...}"
  shift
  local java
  java="$(java_bin)"
  fetched || die "Kafka jars not fetched yet: run '$0 fetch' first"
  "$java" -Xmx128m -XX:+UseSerialGC -Dlog4j2.configurationFile="$HERE/log4j2.xml" \
    -Duntaken.kafka.log="${TMPDIR:-/tmp}/untaken-kafka-configs.log" \
    -cp "$LIBS/*" kafka.admin.ConfigCommand --bootstrap-server "$bootstrap" "$@"
}

case "${1:-}" in
  fetch) cmd_fetch ;;
  props) shift && cmd_props "$@" ;;
  check) fetched && echo "$LIBS" || die "Kafka $KAFKA_VERSION jars not fetched into $CACHE (run: $0 fetch)" ;;
  format) shift && cmd_format "$@" ;;
  run) shift && cmd_run "$@" ;;
  configs) shift && cmd_configs "$@" ;;
  *)
    echo "usage: $0 fetch | check | props WORKDIR PORT CONTROLLER_PORT [KEY=VALUE...] | format WORKDIR CLUSTER_ID | run WORKDIR [WATCH_PID] | configs BOOTSTRAP ARGS..." >&2
    exit 2
    ;;
esac
