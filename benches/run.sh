#!/usr/bin/env bash
# untaken benchmark: one command, `bash benches/run.sh`. See BENCHMARKS.md.
#
# Measures, in one run, on loopback only:
#   (a)    baseline: a no-op tonic Mirror server (examples/noop_mirror.rs), with
#          TCP_NODELAY on accepted sockets as tonic's Server::serve(addr) sets it
#   (b)    untaken serve, sampling 0 % (nothing sampled), Kafka sink on a real broker
#   (c)    untaken serve, sampling 10 %, fast fake upstream, real Kafka
#   (c100) untaken serve, sampling 100 %, fast fake upstream, real Kafka, at (a)'s
#          rate: the healthy twin of (d), same load shape (reference only)
#   (d)    untaken serve, sampling 100 %, shadow upstream hanging, Kafka down
#          (brokers point at a dead port, spool in a temp dir), at (a)'s rate for
#          a sustained soak: latency and memory
#   (e)    extra: untaken serve, sampling 10 %, fast upstream, Kafka down, at (a)'s
#          rate for BENCH_KAFKA_DOWN_SOAK s (a Kafka outage; longer than the 30 s
#          delivery timeout, so the switch to the spool is inside the run)
#   (f), (s) untaken serve, sampling 0 % and 100 %, fast fake upstream, real Kafka,
#          both at the same fixed rate BENCH_PAIR_RPS: issue 9's definition of
#          untaken's CPU per sampled pair, (s) − (f) per call, each round
#   (bm), (cm)  (b) and (c) again with untaken built with the other allocator
#          (BENCH_ALLOCATORS: glibc's malloc and mimalloc, side by side)
#   (k)    Kafka sink alone (examples/sink_bench.rs) vs kcat, same records
# (a)-(c) use the same payload, concurrency and duration, closed loop (ghz -c),
# repeated BENCH_ROUNDS times in a rotated order (a b c bm cm, b c bm cm a, ...):
# the two cores are shared, so each target is judged on the median of the
# per-round ratios, each ratio taken between runs of the same round.
#
# Tools: ghz, kcat and the Kafka jars are fetched once, by hand, with
# `bash benches/tools.sh`; this script installs nothing and stops with a message
# naming that step when one is missing. The broker is tests/kafka/broker.sh with
# the test harness's settings (`broker.sh props`). The report is computed from
# ghz's JSON by benches/run_report.py.
#
# Knobs (environment; BENCH_* on purpose: untaken reads UNTAKEN_* variables as
# config, and builds before 97a9d09 refused unknown ones; it is started without any):
#   BENCH_DURATION=20      seconds measured per scenario (a), (b), (c), (c100)
#   BENCH_ROUNDS=3         rounds of (a), (b), (c), (f), (s)
#   BENCH_PAIR_RPS=3000    the offered rate (ghz -r) of (f) and (s); 0 skips them
#   BENCH_WARMUP=3         seconds of unmeasured load before each measurement
#   BENCH_SOAK=60          seconds of (d)
#   BENCH_KAFKA_DOWN_SOAK=45  seconds of (e); 0 skips it
#   BENCH_CONCURRENCY=16   ghz workers (-c)
#   BENCH_CONNECTIONS=1    gRPC connections ghz opens (a router keeps one channel)
#   BENCH_KAFKA_RECORDS=50000  records for the sink-vs-kcat comparison
#   BENCH_SINK_CONCURRENCY=4096 sends in flight in sink_bench (the publisher's cap, sidecar/publisher.rs MAX_IN_FLIGHT)
#   BENCH_KAFKA_REPEATS=3  repeats of each Kafka producer run (median reported)
#   BENCH_UPSTREAM_DELAY_MS=0  answer delay of the fast fake upstream
#   BENCH_UPSTREAM_JITTER_MS=0 plus up to this much, drawn per request (answers arrive spread)
#   BENCH_PARTITIONS=3     partitions of the auto-created topics
#   BENCH_SHADOW_MAX_CONCURRENCY, BENCH_SHADOW_TIMEOUT  what-if: set max_concurrency
#                          / timeout (e.g. 5s) on the shadow route in every untaken
#                          config (unset: untaken's defaults, none / 60 s)
#   BENCH_ALLOCATORS="glibc mimalloc"  untaken builds measured side by side; the
#                          first runs (c100), (d), (e) too. glibc: built with
#                          --no-default-features; mimalloc: --features mimalloc
#   BENCH_EXTRA_BIN=PATH   also measure this prebuilt untaken as (bx), (cx), e.g. a
#                          build of an older commit: a before/after in the same run
#   BENCH_EXTRA_NAME=NAME  what the report calls it (default "prebuilt")
#   BENCH_SKIP_BUILD=1     use the binaries already in target/bench/bin
#   BENCH_KEEP=1           keep the temp dir (logs, configs, ghz JSON)
#   UNTAKEN_TOOLS          the tools cache dir of benches/tools.sh (default ~/.cache/untaken/tools)
#
# Writes: target/release (cargo), target/bench/ (results and the untaken builds
# in target/bench/bin), and one temp dir it removes. Needs python3 and jq. Every
# process it starts is killed on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DURATION="${BENCH_DURATION:-20}"
ROUNDS="${BENCH_ROUNDS:-3}"
WARMUP="${BENCH_WARMUP:-3}"
SOAK="${BENCH_SOAK:-60}"
KDOWN_SOAK="${BENCH_KAFKA_DOWN_SOAK:-45}"
KREPEATS="${BENCH_KAFKA_REPEATS:-3}"
CONC="${BENCH_CONCURRENCY:-16}"
CONNS="${BENCH_CONNECTIONS:-1}"
KRECORDS="${BENCH_KAFKA_RECORDS:-50000}"
SINK_CONC="${BENCH_SINK_CONCURRENCY:-4096}"
UP_DELAY="${BENCH_UPSTREAM_DELAY_MS:-0}"
UP_JITTER="${BENCH_UPSTREAM_JITTER_MS:-0}"
PARTITIONS="${BENCH_PARTITIONS:-3}"
PAIR_RPS="${BENCH_PAIR_RPS:-3000}"
read -r -a ALLOCATORS <<<"${BENCH_ALLOCATORS:-glibc mimalloc}"
[[ -n "${BENCH_EXTRA_BIN:-}" ]] && ALLOCATORS+=(prebuilt)
C_RATE=0.1
BROKER_SH="$ROOT/tests/kafka/broker.sh"
TCK="$(getconf CLK_TCK)"
OUT_DIR="$ROOT/target/bench"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/untaken-bench.XXXXXX")"
PIDS=()

# GHZ_VERSION, require_tools (sets GHZ and KCAT)
source "$ROOT/benches/tools.sh"
# log, die, cleanup, stop_pid, free_port, wait_line, cpu_ticks, hwm_kib, rss_kib, start_broker
source "$ROOT/benches/common.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM
aux_ticks() { # cpu_ticks summed over the broker and the fake upstream, when running
  local p t=0 x
  for p in ${BROKER_PID:-} ${UPSTREAM_PID:-}; do
    x="$(cpu_ticks "$p" 2>/dev/null || echo 0)"
    t=$((t + x))
  done
  echo "$t"
}
host_cpu() { # busy (steal excluded), total and steal jiffies of the whole machine
  # /proc/stat cpu: user nice system idle iowait irq softirq steal guest guest_nice;
  # guest time is already inside user, so only the first eight columns count.
  awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6 - $9, t, $9 }' /proc/stat
}

# ---------------------------------------------------------------- tools, build

check_tools() {
  require_tools
  for t in python3 jq ss curl awk; do command -v "$t" >/dev/null || die "$t not found"; done
}

# The tag suffix of an allocator's runs: "" for the first (b, c), "m" for mimalloc (bm, cm).
alloc_suffix() {
  [[ "$1" == "${ALLOCATORS[0]}" ]] && return 0
  case "$1" in
    mimalloc) echo m ;;
    glibc) echo g ;;
    prebuilt) echo x ;;
  esac
}
alloc_flags() {
  case "$1" in
    glibc) echo --no-default-features ;;
    mimalloc) echo --features mimalloc ;;
    prebuilt) echo "(prebuilt: ${BENCH_EXTRA_NAME:-prebuilt}, $BENCH_EXTRA_BIN)" ;;
    *) die "BENCH_ALLOCATORS: unknown allocator '$1' (glibc, mimalloc)" ;;
  esac
}

build() {
  mkdir -p "$OUT_DIR/bin"
  local alloc
  if [[ "${BENCH_SKIP_BUILD:-}" == 1 ]]; then
    log "BENCH_SKIP_BUILD=1: using target/release and target/bench/bin as they are"
  else
    log "cargo build --release (noop_mirror, fake_upstream, sink_bench)"
    cargo build --release --quiet --example noop_mirror --example fake_upstream --example sink_bench
    for alloc in "${ALLOCATORS[@]}"; do
      [[ "$alloc" == prebuilt ]] && continue
      log "cargo build --release --bin untaken $(alloc_flags "$alloc") ($alloc)"
      # shellcheck disable=SC2046
      cargo build --release --quiet --bin untaken $(alloc_flags "$alloc")
      cp "$ROOT/target/release/untaken" "$OUT_DIR/bin/untaken-$alloc"
    done
  fi
  # What was measured: the commit and the uncommitted changes the build saw.
  SRC_STATE="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')"
  local dirty
  dirty="$(git -C "$ROOT" status --short -- src proto build.rs Cargo.toml Cargo.lock 2>/dev/null | wc -l)"
  if [[ "$dirty" != 0 ]]; then
    SRC_STATE+=" + $dirty uncommitted files (diff sha256 $(git -C "$ROOT" diff HEAD -- src proto build.rs Cargo.toml Cargo.lock | sha256sum | cut -c1-12))"
  else
    SRC_STATE+=" (clean)"
  fi
  log "source: $SRC_STATE"
  declare -gA BINS
  for alloc in "${ALLOCATORS[@]}"; do BINS[$alloc]="$OUT_DIR/bin/untaken-$alloc"; done
  [[ -n "${BENCH_EXTRA_BIN:-}" ]] && BINS[prebuilt]="$BENCH_EXTRA_BIN"
  BIN="${BINS[${ALLOCATORS[0]}]}"
  NOOP="$ROOT/target/release/examples/noop_mirror"
  FAKE="$ROOT/target/release/examples/fake_upstream"
  SINKB="$ROOT/target/release/examples/sink_bench"
  for b in "${BINS[@]}" "$NOOP" "$FAKE" "$SINKB"; do [[ -x "$b" ]] || die "missing $b"; done
}

# --------------------------------------------------------------------- payload

# A chat-completions request of about 2 KB, as a router would send upstream, and
# the primary route's answer (one-phase pairing: the router already has it, so a
# sampled pair completes as soon as the shadow call does and is published).
write_payload() {
  cat >"$WORK/request.json" <<'EOF'
{"model":"fast-model","stream":true,"temperature":0.2,"max_tokens":512,"user":"u-5f2c9a",
"messages":[
{"role":"system","content":"You are the support assistant of an online retailer of outdoor equipment. Answer in the customer's language, concisely and politely. Always cite the policy section you rely on, in square brackets, e.g. [Returns 2.1]. Never invent order numbers, tracking codes, prices or delivery dates: when you need one, call the matching tool or ask the customer. If a request is ambiguous, ask exactly one clarifying question before acting. Do not give legal or medical advice. Escalate to a human agent when the customer asks for one, when a refund exceeds 500 EUR, or when the customer reports an injury. Policies: [Returns 2.1] Unused items can be returned within 30 days of delivery for a full refund; [Returns 2.2] used items within 14 days for store credit; [Shipping 3.4] orders over 50 EUR ship free within the EU; [Warranty 5.1] two years on all equipment, five years on tents and backpacks."},
{"role":"user","content":"Hi, I ordered a two-person tent and a sleeping bag three weeks ago. The tent arrived with a torn rain fly, and the sleeping bag never came at all."},
{"role":"assistant","content":"I'm sorry about both problems. Could you give me the order number so I can look at the shipment and the tent's warranty [Warranty 5.1]?"},
{"role":"user","content":"It's on the confirmation email, order 4471-2290. Can I get the tent replaced and a refund for the sleeping bag, and how long will it take?"}],
"tools":[{"type":"function","function":{"name":"lookup_order","description":"Fetch an order's items, shipments and tracking","parameters":{"type":"object","properties":{"order_id":{"type":"string"}},"required":["order_id"]}}}]}
EOF
  cat >"$WORK/primary.json" <<'EOF'
{"id":"chatcmpl-9b1e7f0c","object":"chat.completion","created":1731000000,"model":"fast-model","choices":[{"index":0,"message":{"role":"assistant","content":"Thank you. For order 4471-2290 I can replace the tent under warranty [Warranty 5.1]: we send a new one as soon as the carrier collects the damaged one. For the missing sleeping bag I am opening a carrier investigation; if it is not found within 5 working days you get a full refund [Returns 2.1]."},"finish_reason":"stop"}],"usage":{"prompt_tokens":497,"completion_tokens":88,"total_tokens":585}}
EOF
  jq -e . "$WORK/request.json" >/dev/null || die "request.json is not JSON"
  jq -e . "$WORK/primary.json" >/dev/null || die "primary.json is not JSON"
  jq -c . "$WORK/request.json" >"$WORK/request.min.json"
  jq -c . "$WORK/primary.json" >"$WORK/primary.min.json"
  REQ_BYTES=$(wc -c <"$WORK/request.min.json")
  PRIM_BYTES=$(wc -c <"$WORK/primary.min.json")
  REQ_B64=$(base64 -w0 <"$WORK/request.min.json")
  PRIM_B64=$(base64 -w0 <"$WORK/primary.min.json")
  log "payload: request_body $REQ_BYTES bytes, primary.body $PRIM_BYTES bytes"
}

# ghz call data for one run: request ids unique to the run, so hash sampling
# varies per call and no id repeats across runs (a repeat would be ALREADY_EXISTS
# while its pair is pending).
ghz_data() {
  local tag="$1"
  jq -cn --arg rid "bench-$tag-{{.RequestNumber}}" --arg body "$REQ_B64" --arg prim "$PRIM_B64" '{
    request_id: $rid, route_taken: "fast", request_body: $body, slice: "simple_qa",
    labels: {tenant: "tenant-7", router_version: "bench-1", latency_budget_ms: "2500"},
    primary: {body: $prim, status_code: 200, latency_ms: 812.5}
  }' >"$WORK/data-$tag.json"
  echo "$WORK/data-$tag.json"
}

# ghz TAG ADDR SECONDS [RPS] -> $WORK/ghz-TAG.json
run_ghz() {
  local tag="$1" addr="$2" secs="$3" rps="${4:-0}" data
  data="$(ghz_data "$tag")"
  "$GHZ" --insecure --proto "$ROOT/proto/untaken/v1/mirror.proto" --import-paths "$ROOT/proto" \
    --call untaken.v1.Mirror.Mirror -D "$data" -c "$CONC" --connections "$CONNS" -r "$rps" \
    -z "${secs}s" --duration-stop ignore -t 10s -O json -o "$WORK/ghz-$tag.json" "$addr" \
    >"$WORK/ghz-$tag.log" 2>&1 || {
    cat "$WORK/ghz-$tag.log" >&2
    die "ghz $tag failed"
  }
}

# -------------------------------------------------------------------- services

start_noop() { # [--nagle] (diagnostic only; the baseline sets TCP_NODELAY)
  "$NOOP" "$@" 127.0.0.1:0 >"$WORK/noop.out" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_ADDR="$(wait_line "$WORK/noop.out" '^listening ' "$SERVER_PID" | awk '{print $2}')"
}

# start_upstream NAME ARGS... -> UPSTREAM_URL, UPSTREAM_PID
start_upstream() {
  local name="$1"
  shift
  "$FAKE" --name "$name" "$@" >"$WORK/upstream-$name.out" 2>&1 &
  UPSTREAM_PID=$!
  PIDS+=("$UPSTREAM_PID")
  UPSTREAM_URL="$(wait_line "$WORK/upstream-$name.out" '^url ' "$UPSTREAM_PID" | awk '{print $2}')"
}

# write_config TAG RATE SHADOW_URL BROKERS TOPIC -> $WORK/untaken-TAG.toml
write_config() {
  local tag="$1" rate="$2" shadow="$3" brokers="$4" topic="$5"
  cat >"$WORK/untaken-$tag.toml" <<EOF
# Everything not set here is untaken's default (log level info, JSON logs,
# pairing 120 s / 10000 pending, queue 1024, route timeout 60 s, delivery
# timeout 30 s, spool 256 MiB).
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"

[sampling]
default_rate = $rate

[routes.fast]
url = "$FAST_URL"
model = "fast-model"
counterfactual = "reasoning"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60

[routes.reasoning]
url = "$shadow"
model = "reasoning-model"
counterfactual = "fast"
input_usd_per_mtok = 1.10
output_usd_per_mtok = 4.40
${BENCH_SHADOW_MAX_CONCURRENCY:+max_concurrency = $BENCH_SHADOW_MAX_CONCURRENCY}
${BENCH_SHADOW_TIMEOUT:+timeout = \"$BENCH_SHADOW_TIMEOUT\"}

[sink]
type = "kafka"

[sink.kafka]
brokers = "$brokers"
topic = "$topic"

[spool]
dir = "$WORK/spool-$tag"
EOF
  # (inside this unquoted heredoc, \" is what yields a literal quote in ${VAR:+...})
  "$BIN" check-config "$WORK/untaken-$tag.toml" >/dev/null 2>"$WORK/check-$tag.err" ||
    {
      cat "$WORK/check-$tag.err" >&2
      die "config for $tag rejected"
    }
}

# Runs untaken with no UNTAKEN_* variable from our environment (they would be
# read as config keys). -> SERVER_PID, SERVER_ADDR, ADMIN_ADDR
start_untaken() {
  local tag="$1" unset=() v
  for v in $(compgen -e | grep '^UNTAKEN_' || true); do unset+=(-u "$v"); done
  env "${unset[@]}" "$BIN" serve --config "$WORK/untaken-$tag.toml" >"$WORK/untaken-$tag.out" 2>"$WORK/untaken-$tag.log" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  local line
  line="$(wait_line "$WORK/untaken-$tag.log" '"untaken started"' "$SERVER_PID")"
  SERVER_ADDR="$(jq -r '.grpc' <<<"$line")"
  ADMIN_ADDR="$(jq -r '.admin' <<<"$line")"
}

metrics_snapshot() { # TAG: keeps the counters that tell what untaken did
  curl -fsS "http://$ADMIN_ADDR/metrics" >"$WORK/metrics-$1.txt" 2>/dev/null || echo "# scrape failed" >"$WORK/metrics-$1.txt"
}

# sum of a metric family in a snapshot, optionally filtered by a label regex
msum() {
  awk -v name="$2" -v re="${3:-}" '
    $1 ~ ("^" name "(\\{|$)") && (re == "" || $1 ~ re) { s += $NF }
    END { printf "%d", s }' "$WORK/metrics-$1.txt"
}


# ------------------------------------------------------------------- scenarios

declare -A RPS P50 P99 AVG COUNT ERRS CPU HWM BUSY GHZCPU AUX OTHER STEAL

children_cpu() { # user+sys seconds of this shell's waited-for children so far
  # `times` must run in this shell, not in a $( ) subshell that has no children.
  times >"$WORK/times.txt"
  awk 'NR == 2 { s = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); s += a[1] * 60 + a[2] } printf "%.2f", s }' "$WORK/times.txt"
}

# measure TAG [RPS]: warm-up, then the measured ghz run against $SERVER_ADDR with
# CPU (utime+stime of $SERVER_PID), peak RSS and host CPU around it.
measure() {
  local tag="$1" secs="$2" rate="${3:-0}"
  log "$tag: warm-up ${WARMUP}s"
  run_ghz "$tag-warm" "$SERVER_ADDR" "$WARMUP" "$rate"
  local c0 c1 hb0 ht0 hs0 hb1 ht1 hs1 g0 g1 x0 x1
  c0="$(cpu_ticks "$SERVER_PID")"
  x0="$(aux_ticks)"
  read -r hb0 ht0 hs0 < <(host_cpu)
  children_cpu >"$WORK/g0"
  log "$tag: measuring ${secs}s (c=$CONC, rate limit ${rate}/s, 0 = none)"
  run_ghz "$tag" "$SERVER_ADDR" "$secs" "$rate"
  children_cpu >"$WORK/g1"
  g0="$(cat "$WORK/g0")"
  g1="$(cat "$WORK/g1")"
  c1="$(cpu_ticks "$SERVER_PID")"
  x1="$(aux_ticks)"
  read -r hb1 ht1 hs1 < <(host_cpu)
  local j="$WORK/ghz-$tag.json"
  read -r "RPS[$tag]" "COUNT[$tag]" "P50[$tag]" "P99[$tag]" "AVG[$tag]" "ERRS[$tag]" < <(python3 "$ROOT/benches/run_report.py" summary "$j")
  CPU[$tag]="$(awk -v a="$c0" -v b="$c1" -v t="$TCK" 'BEGIN { printf "%.2f", (b - a) / t }')"
  HWM[$tag]="$(hwm_kib "$SERVER_PID")"
  BUSY[$tag]="$(awk -v a="$hb0" -v b="$hb1" -v x="$ht0" -v y="$ht1" 'BEGIN { printf "%.0f", 100 * (b - a) / (y - x) }')"
  # Steal: time our vCPUs were runnable but the hypervisor ran someone else's work.
  STEAL[$tag]="$(awk -v a="$hs0" -v b="$hs1" -v t="$TCK" 'BEGIN { printf "%.2f", (b - a) / t }')"
  GHZCPU[$tag]="$(awk -v a="$g0" -v b="$g1" 'BEGIN { printf "%.2f", b - a }')"
  AUX[$tag]="$(awk -v a="$x0" -v b="$x1" -v t="$TCK" 'BEGIN { printf "%.2f", (b - a) / t }')"
  # Everything else that kept this machine busy meanwhile (steal excluded): kernel
  # softirq time not charged to a process, any other process (host jiffies are
  # CLK_TCK units too).
  OTHER[$tag]="$(awk -v a="$hb0" -v b="$hb1" -v t="$TCK" -v s="${CPU[$tag]}" -v g="${GHZCPU[$tag]}" -v x="${AUX[$tag]}" 'BEGIN { o = (b - a) / t - s - g - x; printf "%.2f", (o < 0) ? 0 : o }')"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$tag" "${CPU[$tag]}" "${GHZCPU[$tag]}" "${AUX[$tag]}" "${OTHER[$tag]}" \
    "${STEAL[$tag]}" "${HWM[$tag]}" "${BUSY[$tag]}" >>"$WORK/runs.tsv"
  if [[ "${ERRS[$tag]}" != 0 ]]; then
    log "$tag: ghz errors: $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("errorDistribution"))' "$j")"
  fi
  log "$tag: $(printf '%.0f' "${RPS[$tag]}") rps, p50 ${P50[$tag]} ms, p99 ${P99[$tag]} ms, server cpu ${CPU[$tag]} s, ghz cpu ${GHZCPU[$tag]} s, broker+upstream cpu ${AUX[$tag]} s, other cpu ${OTHER[$tag]} s, steal ${STEAL[$tag]} s, VmHWM ${HWM[$tag]} KiB, errors ${ERRS[$tag]}"
}

scenario_untaken() { # TAG RATE SHADOW_URL BROKERS TOPIC SECS [RPS]
  local tag="$1"
  write_config "$tag" "$2" "$3" "$4" "$5"
  start_untaken "$tag"
  measure "$tag" "$6" "${7:-0}"
  metrics_snapshot "$tag"
  stop_pid "$SERVER_PID" 15
}

declare -A THREADS FDS
# soak TAG RATE SHADOW_URL SECS: untaken with Kafka down (brokers at a dead port,
# spool in the temp dir), rate-limited at (a)'s median rps, RSS and pairs sampled
# every 2 s.
soak() {
  local tag="$1" rate="$2" shadow="$3" secs="$4"
  write_config "$tag" "$rate" "$shadow" "127.0.0.1:$(free_port)" "bench.pairs.$tag"
  start_untaken "$tag"
  (
    while kill -0 "$SERVER_PID" 2>/dev/null; do
      printf '%s %s %s\n' "$(date +%s)" "$(rss_kib "$SERVER_PID" 2>/dev/null || echo 0)" \
        "$(curl -fsS "http://$ADMIN_ADDR/metrics" 2>/dev/null | awk '/^untaken_pending_pairs / { p = $2 } /^untaken_pairs_spooled_total / { s = $2 } END { print p + 0, s + 0 }')"
      sleep 2
    done
  ) >"$WORK/rss-$tag.txt" 2>/dev/null &
  local sampler=$!
  PIDS+=("$sampler")
  measure "$tag" "$secs" "$BASE_RPS"
  metrics_snapshot "$tag"
  THREADS[$tag]="$(awk '/^Threads:/ {print $2}' "/proc/$SERVER_PID/status")"
  FDS[$tag]="$(ls "/proc/$SERVER_PID/fd" | wc -l)"
  stop_pid "$SERVER_PID" 10
  stop_pid "$sampler" 1
}

kafka_bench() {
  log "Kafka sink vs kcat: $KRECORDS records"
  # key:payload lines; each payload a ~2 KB pair-record-like JSON document.
  jq -cn --rawfile req "$WORK/request.min.json" --rawfile prim "$WORK/primary.min.json" '
    {schema_version: 1, pair_id: "PAIR", request_id: "REQ", slice: "simple_qa", rate: 0.1,
     route_taken: {name: "fast", model: "fast-model"},
     route_not_taken: {name: "reasoning", model: "reasoning-model"},
     request_body: ($req | fromjson | .messages[0:2]),
     primary: {status_code: 200, latency_ms: 812.5, body: ($prim | fromjson | .choices)}}' >"$WORK/record-template.json"
  awk -v n="$((KRECORDS + 1))" 'NR == 1 { t = $0 } END {
      for (i = 0; i < n; i++) { r = t; gsub(/REQ/, "bench-k-" i, r); gsub(/PAIR/, "pair-" i, r); print "bench-k-" i ":" r } }' \
    "$WORK/record-template.json" >"$WORK/records.txt"
  REC_BYTES="$(head -n1 "$WORK/records.txt" | wc -c)"
  head -n1 "$WORK/records.txt" >"$WORK/records-warm.txt"
  tail -n +2 "$WORK/records.txt" >"$WORK/records-timed.txt"
  local hdrs=(-H content-type=application/json -H untaken-schema=untaken.v1.PairRecord -H untaken-schema-version=1
    -H untaken-slice=simple_qa -H untaken-route-taken=fast)
  local t0 t1 variant topic k vals extra
  for variant in plain lz4; do
    extra=()
    [[ "$variant" == lz4 ]] && extra=(-X compression.type=lz4)
    vals=""
    for ((k = 1; k <= KREPEATS; k++)); do
      topic="bench.kcat.$variant.$k.$STAMP"
      # First record: creates the topic and warms up, untimed (as in sink_bench).
      "$KCAT" -P -b "$BROKERS" -t "$topic" -K: "${hdrs[@]}" -X acks=all -X enable.idempotence=true "${extra[@]}" <"$WORK/records-warm.txt"
      t0="$(date +%s.%N)"
      "$KCAT" -P -b "$BROKERS" -t "$topic" -K: "${hdrs[@]}" -X acks=all -X enable.idempotence=true "${extra[@]}" <"$WORK/records-timed.txt" ||
        die "kcat produce failed"
      t1="$(date +%s.%N)"
      vals+=" $(awk -v a="$t0" -v b="$t1" -v n="$KRECORDS" 'BEGIN { printf "%.0f", n / (b - a) }')"
    done
    KCAT[$variant]="$(median <<<"$vals" | awk '{ printf "%.0f", $1 }')"
    KCAT_ALL[$variant]="${vals# }"
    log "kcat ($variant): $KRECORDS records, rec/s per repeat:$vals"
  done
  for variant in capped unbounded; do
    local conc="$SINK_CONC"
    [[ "$variant" == unbounded ]] && conc="$KRECORDS"
    vals=""
    for ((k = 1; k <= KREPEATS; k++)); do
      topic="bench.sink.$variant.$k.$STAMP"
      "$SINKB" --brokers "$BROKERS" --topic "$topic" --file "$WORK/records.txt" --warmup 1 --concurrency "$conc" \
        >"$WORK/sink.json" 2>"$WORK/sink.err" || {
        cat "$WORK/sink.err" "$WORK/sink.json" >&2
        die "sink_bench failed"
      }
      vals+=" $(jq -r '.records_per_s' "$WORK/sink.json")"
    done
    SINK[$variant]="$(median <<<"$vals" | awk '{ printf "%.0f", $1 }')"
    SINK_ALL[$variant]="${vals# }"
    log "untaken KafkaSink ($variant, $conc in flight): rec/s per repeat:$vals"
  done
}
declare -A KCAT KCAT_ALL SINK SINK_ALL

# ----------------------------------------------------------------------- main

median() { tr ' ' '\n' | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%.2f\n", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

mkdir -p "$OUT_DIR"
check_tools
build
write_payload
: >"$WORK/runs.tsv"
FAST_URL="http://127.0.0.1:9/unused" # overwritten below
start_broker

start_upstream fast --delay-ms "$UP_DELAY" --jitter-ms "$UP_JITTER"
FAST_URL="$UPSTREAM_URL"
FAST_PID="$UPSTREAM_PID"
log "fast fake upstream at $FAST_URL"

run_scenario() { # a|b|c|f|s|bm|cm|fm|sm... ROUND
  local s="$1" r="$2" alloc="${ALLOCATORS[0]}" a
  for a in "${ALLOCATORS[@]}"; do [[ "${s:1}" == "$(alloc_suffix "$a")" ]] && alloc="$a"; done
  BIN="${BINS[$alloc]}"
  case "$s" in
    a)
      log "(a) round $r: baseline no-op server"
      start_noop
      measure "a$r" "$DURATION"
      stop_pid "$SERVER_PID" 5
      ;;
    b*)
      log "($s) round $r: untaken ($alloc), sampling 0 %"
      scenario_untaken "$s$r" 0.0 "$FAST_URL" "$BROKERS" "bench.pairs.$s$r.$STAMP" "$DURATION"
      ;;
    c*)
      log "($s) round $r: untaken ($alloc), sampling $C_RATE, fast upstream, real Kafka"
      scenario_untaken "$s$r" "$C_RATE" "$FAST_URL" "$BROKERS" "bench.pairs.$s$r.$STAMP" "$DURATION"
      ;;
    f*)
      log "($s) round $r: untaken ($alloc), sampling 0 %, at $PAIR_RPS rps"
      scenario_untaken "$s$r" 0.0 "$FAST_URL" "$BROKERS" "bench.pairs.$s$r.$STAMP" "$DURATION" "$PAIR_RPS"
      ;;
    s*)
      log "($s) round $r: untaken ($alloc), sampling 100 %, fast upstream, real Kafka, at $PAIR_RPS rps"
      scenario_untaken "$s$r" 1.0 "$FAST_URL" "$BROKERS" "bench.pairs.$s$r.$STAMP" "$DURATION" "$PAIR_RPS"
      ;;
  esac
}
ORDER=(a)
for alloc in "${ALLOCATORS[@]}"; do
  ORDER+=("b$(alloc_suffix "$alloc")" "c$(alloc_suffix "$alloc")")
  [[ "$PAIR_RPS" != 0 ]] && ORDER+=("f$(alloc_suffix "$alloc")" "s$(alloc_suffix "$alloc")")
done
for ((r = 1; r <= ROUNDS; r++)); do
  k=$(((r - 1) % ${#ORDER[@]}))
  for ((i = 0; i < ${#ORDER[@]}; i++)); do run_scenario "${ORDER[$(((i + k) % ${#ORDER[@]}))]}" "$r"; done
done

BIN="${BINS[${ALLOCATORS[0]}]}"
BASE_RPS="$(printf '%.0f' "$(python3 "$ROOT/benches/run_report.py" median "$WORK" rps a)")"
log "(c100) untaken (${ALLOCATORS[0]}), sampling 100 %, fast upstream, real Kafka, at $BASE_RPS rps (median of (a))"
scenario_untaken c100 1.0 "$FAST_URL" "$BROKERS" "bench.pairs.c100.$STAMP" "$DURATION" "$BASE_RPS"

kafka_bench

log "stopping the Kafka broker"
stop_pid "$BROKER_PID" 20
BROKER_PID=

if [[ "$KDOWN_SOAK" != 0 ]]; then
  log "(e) untaken, sampling $C_RATE, fast upstream, Kafka down, ${KDOWN_SOAK}s at $BASE_RPS rps"
  soak e "$C_RATE" "$FAST_URL" "$KDOWN_SOAK"
fi
stop_pid "$FAST_PID" 5

log "(d) untaken, sampling 100 %, shadow hanging, Kafka down, ${SOAK}s at $BASE_RPS rps"
start_upstream hang --hang
HANG_PID="$UPSTREAM_PID"
soak d 1.0 "$UPSTREAM_URL" "$SOAK"
stop_pid "$HANG_PID" 5

# --------------------------------------------------------------------- report

# What the report needs besides the ghz JSON, /metrics snapshots and runs.tsv.
export M_STAMP="$STAMP" M_SOURCE="$SRC_STATE" M_ROUNDS="$ROUNDS" M_BASE_RPS="$BASE_RPS" M_C_RATE="$C_RATE" M_PAIR_RPS="$PAIR_RPS"
export M_PARTITIONS="$PARTITIONS" M_THREADS_D="${THREADS[d]:-?}" M_FDS_D="${FDS[d]:-?}" M_THREADS_E="${THREADS[e]:-?}" M_FDS_E="${FDS[e]:-?}"
export M_ALLOCS="$(for a in "${ALLOCATORS[@]}"; do printf '%s\t%s\t%s\n' "$(alloc_suffix "$a")" "$a" "$(alloc_flags "$a")"; done)"
export M_MACHINE="$(nproc) cores, $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo), $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo), $(uname -r), load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
export M_SETTINGS="${ROUNDS} rounds x ${DURATION}s (+${WARMUP}s warm-up each), (c100) ${DURATION}s, (d) ${SOAK}s, (e) ${KDOWN_SOAK}s, ghz $GHZ_VERSION -c $CONC --connections $CONNS, request_body ${REQ_BYTES} B + primary.body ${PRIM_BYTES} B, (c) sampled at $C_RATE, (f)/(s) at $PAIR_RPS rps, fake upstream delay ${UP_DELAY} ms (+ up to ${UP_JITTER} ms), $PARTITIONS partitions"
export M_WHAT_IF="${BENCH_SHADOW_MAX_CONCURRENCY:+shadow route max_concurrency=$BENCH_SHADOW_MAX_CONCURRENCY }${BENCH_SHADOW_TIMEOUT:+timeout=$BENCH_SHADOW_TIMEOUT}"
export M_KCAT_VERSION="kcat $("$KCAT" -V 2>/dev/null | awk '/^Version/ {print $2}') (librdkafka $("$KCAT" -V 2>/dev/null | grep -o 'librdkafka [0-9.]*' | awk '{print $2}'))"
export M_RDKAFKA="rdkafka-sys $(awk '/^name = "rdkafka-sys"/ { getline; gsub(/[" ]/, ""); sub(/version=/, ""); print }' "$ROOT/Cargo.lock")"
export M_KRECORDS="$KRECORDS" M_REC_BYTES="$REC_BYTES" M_KREPEATS="$KREPEATS" M_SINK_CONC="$SINK_CONC"
export M_KCAT_PLAIN="${KCAT[plain]}" M_KCAT_PLAIN_ALL="${KCAT_ALL[plain]}" M_KCAT_LZ4="${KCAT[lz4]}" M_KCAT_LZ4_ALL="${KCAT_ALL[lz4]}"
export M_SINK_CAPPED="${SINK[capped]}" M_SINK_CAPPED_ALL="${SINK_ALL[capped]}" M_SINK_UNBOUNDED="${SINK[unbounded]}" M_SINK_UNBOUNDED_ALL="${SINK_ALL[unbounded]}"
python3 "$ROOT/benches/run_report.py" meta >"$WORK/meta.json" || die "run_report.py meta failed"

REPORT="$OUT_DIR/results-$STAMP.md"
python3 "$ROOT/benches/run_report.py" report "$WORK" >"$REPORT" || die "run_report.py failed (BENCH_KEEP=1 keeps its inputs in the temp dir)"
# The report's inputs, beside it: `run_report.py report DIR` recomputes it from a dir holding them.
KEPT="$OUT_DIR/run-$STAMP"
mkdir -p "$KEPT"
cp "$WORK/runs.tsv" "$WORK/meta.json" "$WORK"/ghz-*.json "$WORK"/metrics-*.txt "$KEPT/"
cp "$WORK"/rss-*.txt "$KEPT/" 2>/dev/null || true
for t in d e; do cp "$WORK/untaken-$t.log" "$KEPT/" 2>/dev/null || true; done
echo
cat "$REPORT"
echo
log "report: $REPORT; its inputs (ghz JSON, /metrics snapshots, runs.tsv, meta.json) in $KEPT"
