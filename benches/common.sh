#!/usr/bin/env bash
# Shell helpers shared by the benchmarks (benches/run.sh, benches/judge.sh): logging,
# process bookkeeping (every pid in PIDS is killed on exit), free ports, CPU and
# memory of a process from /proc, and a single-node KRaft broker started with
# tests/kafka/broker.sh (its settings are the test harness's: `broker.sh props`).
# Sourced, not run. Expects ROOT, WORK, PIDS, PARTITIONS, BROKER_SH and KCAT (from
# benches/tools.sh's require_tools) to be set by the script that sources it.

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "FAILED: $*"
  exit 1
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  sleep 0.5
  for pid in "${PIDS[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ "${BENCH_KEEP:-}" == 1 ]]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}

forget_pid() { # remove a pid we stopped ourselves from the cleanup list
  local p out=()
  for p in "${PIDS[@]}"; do [[ "$p" == "$1" ]] || out+=("$p"); done
  PIDS=("${out[@]}")
}

# Stops one process we started: SIGTERM, up to $2 seconds, then SIGKILL.
stop_pid() {
  local pid="$1" wait_s="${2:-10}" i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < wait_s * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}

# A loopback port nobody listens on (below the ephemeral range).
free_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    if ! ss -Htln "sport = :$p" 2>/dev/null | grep -q . && ! ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then
      echo "$p"
      return 0
    fi
  done
  die "no free port"
}

# Waits until FILE has a line matching REGEX; prints that line.
wait_line() {
  local file="$1" re="$2" pid="$3" secs="${4:-30}" i
  for ((i = 0; i < secs * 10; i++)); do
    if grep -Eq "$re" "$file" 2>/dev/null; then
      grep -E "$re" "$file" | head -n1
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || {
      tail -n 30 "$file" >&2
      die "process $pid exited before printing /$re/ (log $file)"
    }
    sleep 0.1
  done
  tail -n 30 "$file" >&2
  die "timed out waiting for /$re/ in $file"
}

cpu_ticks() { # utime+stime of a process, in clock ticks
  awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

hwm_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

start_broker() {
  local dir="$WORK/kafka" cp
  mkdir -p "$dir"
  KPORT="$(free_port)"
  cp="$(free_port)"
  [[ "$cp" != "$KPORT" ]] || cp=$((KPORT + 1))
  # The integration-test harness's settings (tests/common/kafka.rs writes them the same way).
  bash "$BROKER_SH" props "$dir" "$KPORT" "$cp" "num.partitions=$PARTITIONS" || die "broker.sh props failed"
  local cid
  # base64url, never starting with `-` (kafka-storage would read it as an option),
  # as tests/common/kafka.rs makes it.
  cid="-"
  while [[ "$cid" == -* ]]; do cid="$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"; done
  bash "$BROKER_SH" format "$dir" "$cid" >"$dir/format.out" 2>&1 || {
    cat "$dir/format.out" >&2
    die "kafka format failed"
  }
  # WATCH_PID = this script: if it dies without its trap, the broker goes too.
  bash "$BROKER_SH" run "$dir" $$ >"$dir/broker.out" 2>&1 &
  BROKER_PID=$!
  PIDS+=("$BROKER_PID")
  BROKERS="127.0.0.1:$KPORT"
  local i
  for ((i = 0; i < 900; i++)); do
    if "$KCAT" -L -b "$BROKERS" -m 2 2>/dev/null | grep -q '1 brokers'; then
      log "Kafka ready at $BROKERS (pid $BROKER_PID)"
      return 0
    fi
    kill -0 "$BROKER_PID" 2>/dev/null || {
      tail -n 40 "$dir/broker.out" "$dir/broker.log" >&2 || true
      die "broker exited"
    }
    sleep 0.1
  done
  tail -n 40 "$dir/broker.log" >&2 || true
  die "broker not ready after 90 s"
}
