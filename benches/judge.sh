#!/usr/bin/env bash
# Judge worker benchmark: one command, `bash benches/judge.sh`. See BENCHMARKS.md,
# section "Judge worker".
#
# On loopback, against a real single-node Kafka broker:
#   (base) kcat consuming the pairs topic from the beginning to the end: how fast one
#          process can merely read these records (throughput and CPU per record)
#   (j)    `untaken judge` (release build), pairwise judge against a fake judge that
#          answers after BENCH_JUDGE_DELAY_MS (examples/judge_peer.rs), grading the
#          same records: two judge calls per pair, each grade acknowledged by Kafka
#          and its offset committed
# Reported side by side: records/s, CPU µs per record (the worker's own utime+stime
# from /proc/PID/stat over the whole run, so the fake judge's CPU is excluded), peak
# RSS (VmHWM). Targets: >= 500 pairs/s, <= 100 µs CPU per graded pair, RSS < 64 MiB.
#
# Knobs (environment; BENCH_* because untaken reads UNTAKEN_* as config):
#   BENCH_JUDGE_PAIRS=30000       pairs produced and graded
#   BENCH_JUDGE_DELAY_MS=200      fake judge latency per call
#   BENCH_JUDGE_CONCURRENCY=256   [limits] max_concurrency (judge calls in flight; the default)
#   BENCH_JUDGE_IN_FLIGHT=1024    [kafka] in_flight (records read, not committed; the default)
#   BENCH_PARTITIONS=6            partitions of the pairs topic
#   BENCH_JUDGE_MALLOC_ARENA_MAX  what-if: glibc MALLOC_ARENA_MAX for the worker (unset: glibc's default)
#   BENCH_JUDGE_THREADS="1 2"     [limits] worker_threads: one (j) run per value and allocator
#                                 (1 is the default; 2 = one per core here, Tokio's own default)
#   BENCH_JUDGE_ALLOCATORS="glibc mimalloc"  one (j) run per global allocator, side by side
#                                 (the `mimalloc` cargo feature; glibc is the default build)
#   BENCH_EXTRA_BIN=PATH          also measure this prebuilt untaken (e.g. a build of an
#                                 older commit), before the others: a before/after in one run
#   BENCH_EXTRA_NAME=NAME         what the report calls it (default "prebuilt")
#   BENCH_SKIP_BUILD=1            use the binaries already in target/release (then
#                                 BENCH_JUDGE_ALLOCATORS must name the one they were built with)
#   BENCH_KEEP=1                  keep the temp dir (logs, config, metrics)
#
# Installs nothing: kcat and the Kafka jars come from `bash benches/tools.sh` (it
# stops naming that step when they are missing). Every process it starts is
# killed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

N="${BENCH_JUDGE_PAIRS:-30000}"
DELAY="${BENCH_JUDGE_DELAY_MS:-200}"
CONCURRENCY="${BENCH_JUDGE_CONCURRENCY:-256}"
IN_FLIGHT="${BENCH_JUDGE_IN_FLIGHT:-1024}"
PARTITIONS="${BENCH_PARTITIONS:-6}"
ALLOCATORS="${BENCH_JUDGE_ALLOCATORS:-glibc mimalloc}"
THREADS="${BENCH_JUDGE_THREADS:-1 2}"
BROKER_SH="$ROOT/tests/kafka/broker.sh"
TCK="$(getconf CLK_TCK)"
BIN="$ROOT/target/release/untaken"
PEER="$ROOT/target/release/examples/judge_peer"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/untaken-judge-bench.XXXXXX")"
PIDS=()

# require_tools (sets KCAT)
source "$ROOT/benches/tools.sh"
# log, die, cleanup, stop_pid, free_port, wait_line, cpu_ticks, hwm_kib, start_broker
source "$ROOT/benches/common.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM

require_tools
for t in curl awk ss; do command -v "$t" >/dev/null || die "$t not found"; done
# One worker binary per allocator, built with and without the `mimalloc` feature and
# copied into WORK (cargo keeps both builds cached, so switching is cheap).
if [[ "${BENCH_SKIP_BUILD:-}" == 1 && "$ALLOCATORS" == *" "* ]]; then
  die "BENCH_SKIP_BUILD=1 runs the one binary in target/release: set BENCH_JUDGE_ALLOCATORS to its allocator"
fi
for a in $ALLOCATORS; do
  case "$a" in
    glibc) features=() ;;
    mimalloc) features=(--features mimalloc) ;;
    *) die "BENCH_JUDGE_ALLOCATORS: unknown allocator $a (glibc, mimalloc)" ;;
  esac
  if [[ "${BENCH_SKIP_BUILD:-}" != 1 ]]; then
    log "building untaken ($a) and examples/judge_peer (release)"
    cargo build --release --locked "${features[@]}" --bin untaken --example judge_peer >&2
  fi
  cp "$BIN" "$WORK/untaken-$a"
done

EXTRA_NAME="${BENCH_EXTRA_NAME:-prebuilt}"
if [[ -n "${BENCH_EXTRA_BIN:-}" ]]; then
  [[ -x "$BENCH_EXTRA_BIN" ]] || die "BENCH_EXTRA_BIN: $BENCH_EXTRA_BIN is not an executable"
  [[ "$EXTRA_NAME" =~ ^[A-Za-z0-9._-]+$ ]] || die "BENCH_EXTRA_NAME: letters, digits, . _ - only"
  cp "$BENCH_EXTRA_BIN" "$WORK/untaken-$EXTRA_NAME"
fi

start_broker
PAIRS="bench.pairs.$RANDOM"
GRADES="bench.grades.$RANDOM"

log "writing $N pairs to $PAIRS ($PARTITIONS partitions)"
"$PEER" pairs --count "$N" >"$WORK/pairs.txt"
"$KCAT" -P -b "$BROKERS" -t "$PAIRS" -K: -l "$WORK/pairs.txt"
avg_bytes=$(awk -v n="$N" '{ s += length($0) } END { printf "%d", s / n }' "$WORK/pairs.txt")

# --- (base) kcat reads the same records -------------------------------------------
log "(base) kcat -C of $N records"
/usr/bin/time -f '%e %U %S %M' -o "$WORK/kcat.time" \
  "$KCAT" -C -b "$BROKERS" -t "$PAIRS" -o beginning -e -q -f '%o\n' >"$WORK/kcat.out"
read -r K_WALL K_USER K_SYS K_RSS <"$WORK/kcat.time"
K_COUNT=$(wc -l <"$WORK/kcat.out")
[[ "$K_COUNT" == "$N" ]] || die "kcat read $K_COUNT records, expected $N"

# --- (j) untaken judge --------------------------------------------------------------
"$PEER" judge --delay-ms "$DELAY" >"$WORK/judge.out" 2>&1 &
JUDGE_PID=$!
PIDS+=("$JUDGE_PID")
JUDGE_ADDR=$(wait_line "$WORK/judge.out" '^listening on ' "$JUDGE_PID" | awk '{ print $3 }')
ADMIN="127.0.0.1:$(free_port)"
write_config() { # $1: consumer group, $2: worker threads
  cat >"$WORK/judge.toml" <<TOML
[judge]
kind = "pairwise"
[judge.pairwise]
url = "http://$JUDGE_ADDR/v1/chat/completions"
model = "bench-judge"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 4.0
[limits]
max_concurrency = $CONCURRENCY
worker_threads = $2
[kafka]
brokers = "$BROKERS"
pairs_topic = "$PAIRS"
grades_topic = "$GRADES.$1"
group_id = "$1"
in_flight = $IN_FLIGHT
[server]
admin_listen = "$ADMIN"
[log]
level = "warn"
TOML
}

published() { # grades acknowledged so far, from the worker's /metrics
  curl -fsS "http://$ADMIN/metrics" 2>/dev/null >"$WORK/metrics.txt" || {
    echo 0
    return
  }
  awk '$1 ~ /^untaken_judge_grades_published_total/ { s += $NF } END { printf "%d", s }' "$WORK/metrics.txt"
}
now() { date +%s.%N; }

# Grades all N pairs with one worker binary (a fresh consumer group and grades topic);
# appends "run t0 t10 t90 tend ticks hwm graded calls maxfl" to $WORK/runs.txt.
run_worker() { # $1: allocator, $2: worker threads
  local bin="$1" alloc="$1,${2}-thread" group="bench-judge-$1-$2-$RANDOM"
  write_config "$group" "$2"
  "$KCAT" -P -b "$BROKERS" -t "$GRADES.$group" -K: /dev/null
  "$WORK/untaken-$bin" check-config "$WORK/judge.toml" >&2
  log "(j) untaken judge ($alloc) grading $N pairs (fake judge ${DELAY} ms, $CONCURRENCY calls in flight at most)"
  local t0 t10="" t90="" tend="" maxfl=0 p t f wpid
  t0=$(now)
  if [[ -n "${BENCH_JUDGE_MALLOC_ARENA_MAX:-}" ]]; then
    MALLOC_ARENA_MAX="$BENCH_JUDGE_MALLOC_ARENA_MAX" "$WORK/untaken-$bin" judge --config "$WORK/judge.toml" >"$WORK/worker-$alloc.log" 2>&1 &
  else
    "$WORK/untaken-$bin" judge --config "$WORK/judge.toml" >"$WORK/worker-$alloc.log" 2>&1 &
  fi
  wpid=$!
  PIDS+=("$wpid")
  while :; do
    kill -0 "$wpid" 2>/dev/null || {
      tail -n 30 "$WORK/worker-$alloc.log" >&2
      die "the worker exited"
    }
    p=$(published)
    t=$(now)
    f=$(awk '$1 == "untaken_judge_in_flight" { print $2 }' "$WORK/metrics.txt")
    [[ -n "$f" && "$f" -gt "$maxfl" ]] && maxfl=$f
    echo "$t $p ${f:-0} $(rss_kib "$wpid" 2>/dev/null || echo 0)" >>"$WORK/progress-$alloc.txt"
    [[ -z "$t10" && "$p" -ge $((N / 10)) ]] && t10=$t
    [[ -z "$t90" && "$p" -ge $((N * 9 / 10)) ]] && t90=$t
    if [[ "$p" -ge "$N" ]]; then
      tend=$t
      break
    fi
    awk -v t="$t" -v t0="$t0" 'BEGIN { exit !(t - t0 > 600) }' && die "not done after 600 s ($p graded)"
    sleep 0.2
  done
  local ticks hwm graded calls
  ticks=$(cpu_ticks "$wpid")
  hwm=$(hwm_kib "$wpid")
  cp "$WORK/metrics.txt" "$WORK/metrics-$alloc.txt"
  stop_pid "$wpid" 30
  graded=$("$KCAT" -C -b "$BROKERS" -t "$GRADES.$group" -o beginning -e -q -f '%k\n' | sort -u | wc -l)
  calls=$(awk '$1 ~ /^untaken_judge_calls_total/ { s += $NF } END { printf "%d", s }' "$WORK/metrics-$alloc.txt")
  echo "$alloc $t0 $t10 $t90 $tend $ticks $hwm $graded $calls $maxfl" >>"$WORK/runs.txt"
  [[ "$graded" == "$N" ]] || die "($alloc) $graded distinct grades for $N pairs"
}

[[ -n "${BENCH_EXTRA_BIN:-}" ]] && for t in $THREADS; do run_worker "$EXTRA_NAME" "$t"; done
for a in $ALLOCATORS; do for t in $THREADS; do run_worker "$a" "$t"; done; done

# --- report -------------------------------------------------------------------------
awk -v n="$N" -v bytes="$avg_bytes" -v kw="$K_WALL" -v ku="$K_USER" -v ks="$K_SYS" -v krss="$K_RSS" -v tck="$TCK" \
  -v window="$IN_FLIGHT" -v arena="${BENCH_JUDGE_MALLOC_ARENA_MAX:+, MALLOC_ARENA_MAX=$BENCH_JUDGE_MALLOC_ARENA_MAX}" -v delay="$DELAY" -v conc="$CONCURRENCY" -v parts="$PARTITIONS" '
  { alloc[NR] = $1; t0[NR] = $2; t10[NR] = $3; t90[NR] = $4; tend[NR] = $5; ticks[NR] = $6; hwm[NR] = $7; graded[NR] = $8; calls[NR] = $9; maxfl[NR] = $10 }
  END {
  printf "\n## Judge worker benchmark: %d pairs (%d bytes each on average), %d partitions, fake judge %d ms, max_concurrency %d, in_flight %d%s\n\n", n, bytes, parts, delay, conc, window, arena
  printf "| run | records/s | wall s | CPU s | CPU µs/record | peak RSS MiB |\n|---|---|---|---|---|---|\n"
  printf "| (base) kcat -C, read only | %.0f | %.2f | %.2f | %.1f | %.1f |\n", n / kw, kw, ku + ks, (ku + ks) * 1e6 / n, krss / 1024
  for (i = 1; i <= NR; i++) {
    steady = 0.8 * n / (t90[i] - t10[i]); wcpu = ticks[i] / tck
    printf "| (j) untaken judge, %s, steady (10%%..90%%) | %.0f | %.2f | | | |\n", alloc[i], steady, t90[i] - t10[i]
    printf "| (j) untaken judge, %s, whole run (start-up included) | %.0f | %.2f | %.2f | %.1f | %.1f |\n", alloc[i], n / (tend[i] - t0[i]), tend[i] - t0[i], wcpu, wcpu * 1e6 / n, hwm[i] / 1024
  }
  for (i = 1; i <= NR; i++) {
    steady = 0.8 * n / (t90[i] - t10[i]); wcpu = ticks[i] / tck
    printf "\n(%s) grades in the grades topic (distinct keys): %d of %d; judge calls: %d (%.2f a pair); most records uncommitted at once: %d (in_flight = %d).\n", alloc[i], graded[i], n, calls[i], calls[i] / n, maxfl[i], window
    printf "(%s) targets: >= 500 pairs/s: %s (steady %.0f); <= 100 µs CPU a pair: %s (%.1f); RSS < 64 MiB: %s (%.1f).\n", alloc[i], \
      (steady >= 500 ? "met" : "MISSED"), steady, (wcpu * 1e6 / n <= 100 ? "met" : "MISSED"), wcpu * 1e6 / n, (hwm[i] < 65536 ? "met" : "MISSED"), hwm[i] / 1024
  }
}' "$WORK/runs.txt"
