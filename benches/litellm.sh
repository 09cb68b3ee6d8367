#!/usr/bin/env bash
# What the untaken callback costs a LiteLLM proxy: `bash benches/litellm.sh`.
# See BENCHMARKS.md, "LiteLLM callback".
#
# One real LiteLLM proxy (the pinned release, integrations/litellm/venv.sh) on the
# example config, two fake OpenAI upstreams (examples/fake_upstream.rs, own
# processes), the same closed-loop load (examples/chat_load.rs) in each scenario:
#   (n) the proxy without the callback (the example config minus its `callbacks` line)
#   (m) with the callback; untaken serve at 0 % sampling: one Mirror per request
#   (s) with the callback; untaken serve at 100 %: Mirror before the call and
#       Complete after it for every request, and untaken's shadow call
# Then the callback alone (benches/litellm_callback.py): its hooks driven directly
# in the venv, against untaken at 0 % and 100 %, beside a bare CustomLogger: the
# process CPU per request and the time a request spends in the hooks, without the
# proxy's own ~7 ms of CPU per request (and its noise) around them.
# Scenarios run BENCH_LITELLM_ROUNDS times in rotated order (n m s, m s n, ...) so
# drift on the shared cores does not favour one. The proxy's CPU is utime+stime of
# its process tree from /proc, read before and after the measured requests.
#
# Knobs (environment):
#   BENCH_LITELLM_REQUESTS=2000      measured requests per scenario and round
#   BENCH_LITELLM_WARMUP=200         unmeasured requests after the proxy starts
#   BENCH_LITELLM_CONCURRENCY=8      requests in flight
#   BENCH_LITELLM_ROUNDS=2
#   BENCH_LITELLM_CALLBACK_REQUESTS=5000  requests of the callback-alone runs
#   BENCH_LITELLM_STREAM=0           1: ask for streamed answers
#   BENCH_LITELLM_UPSTREAM_DELAY_MS=0  answer delay of the fake upstreams
#   BENCH_SKIP_BUILD=1               use the binaries already in target/release
#   UNTAKEN_TOOLS                    cache dir of the LiteLLM venv (default ~/.cache/untaken/tools)
#   (installs nothing: the venv is made once by `bash benches/tools.sh litellm`; the script stops naming that step when it is missing or stale)
#
# Loopback only. Writes target/bench/litellm-<stamp>.md; every process it starts is
# killed on exit and its temp dir removed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
REQUESTS="${BENCH_LITELLM_REQUESTS:-2000}"
WARMUP="${BENCH_LITELLM_WARMUP:-200}"
CONC="${BENCH_LITELLM_CONCURRENCY:-8}"
ROUNDS="${BENCH_LITELLM_ROUNDS:-2}"
STREAM="${BENCH_LITELLM_STREAM:-0}"
UP_DELAY="${BENCH_LITELLM_UPSTREAM_DELAY_MS:-0}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT_DIR="$ROOT/target/bench"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
TCK="$(getconf CLK_TCK)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/untaken-litellm-bench.XXXXXX")"
PIDS=()
touch "$WORK/rows.tsv" "$WORK/callback.jsonl"
# LiteLLM would fetch its model price map from the internet at import: use the bundled one.
export LITELLM_LOCAL_MODEL_COST_MAP=True LITELLM_TELEMETRY=False

log() { printf '[litellm-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# utime+stime (ticks) of a process and all its descendants (uvicorn workers, if any).
tree_ticks() {
  python3 - "$1" <<'EOF'
import os, sys
stat = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stat[int(p)] = (int(f[1]), int(f[11]) + int(f[12]))  # ppid, utime + stime
tree, todo = set(), [int(sys.argv[1])]
while todo:
    pid = todo.pop()
    tree.add(pid)
    todo += [c for c, (pp, _) in stat.items() if pp == pid and c not in tree]
print(sum(stat[p][1] for p in tree if p in stat))
EOF
}

wait_http() { # url timeout_s
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null "$1" 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || return 1
    sleep 0.2
  done
}

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building untaken and the helpers (release)"
  cargo build --release --quiet --bin untaken --example fake_upstream --example chat_load
fi
BIN="$TARGET_DIR/release"
log "LiteLLM venv"
VENV="$(bash "$ROOT/integrations/litellm/venv.sh" --check)" ||
  die "the LiteLLM venv is missing or stale; this benchmark installs nothing: fetch it once with bash benches/tools.sh litellm"
LITELLM_VERSION="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("litellm"))')"

start_upstream() { # name -> sets UP_BASE (…/v1)
  "$BIN/examples/fake_upstream" --name "$1" --delay-ms "$UP_DELAY" > "$WORK/up-$1.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    grep -q '^url ' "$WORK/up-$1.out" 2>/dev/null && break
    sleep 0.05
  done
  UP_BASE="$(sed -n 's|^url \(.*\)/chat/completions$|\1|p' "$WORK/up-$1.out")"
  [ -n "$UP_BASE" ] || die "fake upstream $1 did not start: $(cat "$WORK/up-$1.out")"
}
start_upstream fast; FAST_BASE="$UP_BASE"
start_upstream reasoning; REASONING_BASE="$UP_BASE"

grep -q 'callbacks: \["untaken_litellm.handler"\]' integrations/litellm/config.example.yaml \
  || die "the example config no longer loads the callback the way this script expects"
cp integrations/litellm/config.example.yaml "$WORK/with-callback.yaml"
grep -v 'callbacks: \["untaken_litellm.handler"\]' integrations/litellm/config.example.yaml > "$WORK/without-callback.yaml"
KEY="sk-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"

SIDECAR_PID="" SIDECAR_GRPC="" PROXY_PID="" PROXY_URL=""
start_sidecar() { # rate -> sets SIDECAR_PID and SIDECAR_GRPC
  local grpc admin
  grpc="127.0.0.1:$(free_port)"; admin="127.0.0.1:$(free_port)"
  cat > "$WORK/untaken.toml" <<EOF
[server]
listen = "$grpc"
admin_listen = "$admin"
[log]
level = "warn"
[sampling]
default_rate = $1
[routes.fast]
url = "$FAST_BASE/chat/completions"
model = "fast-model"
counterfactual = "reasoning"
timeout = "5s"
[routes.reasoning]
url = "$REASONING_BASE/chat/completions"
model = "reasoning-model"
counterfactual = "fast"
timeout = "5s"
[sink]
type = "file"
[sink.file]
path = "$WORK/pairs.jsonl"
[spool]
dir = "$WORK/spool"
EOF
  env -u RUST_LOG "$BIN/untaken" serve --config "$WORK/untaken.toml" >> "$WORK/untaken.log" 2>&1 &
  SIDECAR_PID=$!; PIDS+=("$SIDECAR_PID")
  wait_http "http://$admin/ready" 30 || die "untaken not ready: $(tail -5 "$WORK/untaken.log")"
  SIDECAR_GRPC="$grpc"
}

start_proxy() { # config grpc_addr -> sets PROXY_PID and PROXY_URL
  local port; port="$(free_port)"
  PROXY_URL="http://127.0.0.1:$port"
  env LITELLM_MASTER_KEY="$KEY" \
    FAST_API_BASE="$FAST_BASE" FAST_API_KEY=sk-fake REASONING_API_BASE="$REASONING_BASE" REASONING_API_KEY=sk-fake \
    LITELLM_UNTAKEN_TARGET="$2" \
    "$VENV/bin/litellm" --config "$1" --host 127.0.0.1 --port "$port" > "$WORK/proxy.log" 2>&1 &
  PROXY_PID=$!; PIDS+=("$PROXY_PID")
  wait_http "$PROXY_URL/health/liveliness" 120 || die "litellm not ready: $(tail -20 "$WORK/proxy.log")"
}

stop() {
  for p in "$@"; do
    if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; fi
  done
}

load() { # requests -> JSON line
  local s=(); [ "$STREAM" = 1 ] && s=(--stream)
  "$BIN/examples/chat_load" --url "$PROXY_URL" --key "$KEY" --model fast --requests "$1" --concurrency "$CONC" "${s[@]}"
}

run_scenario() { # name round
  local name=$1 config="$WORK/with-callback.yaml"
  SIDECAR_PID="" SIDECAR_GRPC="127.0.0.1:9"
  case $name in
    n) config="$WORK/without-callback.yaml" ;;
    m) start_sidecar 0.0 ;;
    s) start_sidecar 1.0 ;;
  esac
  start_proxy "$config" "$SIDECAR_GRPC"
  load "$WARMUP" > /dev/null
  local before after json
  before="$(tree_ticks "$PROXY_PID")"
  json="$(load "$REQUESTS")"
  after="$(tree_ticks "$PROXY_PID")"
  local pairs=0; [ -f "$WORK/pairs.jsonl" ] && pairs="$(wc -l < "$WORK/pairs.jsonl")"
  python3 - "$name" "$2" "$json" "$before" "$after" "$TCK" "$pairs" "$(grep -c 'untaken callback' "$WORK/proxy.log" || true)" <<'EOF' >> "$WORK/rows.tsv"
import json, sys
name, rnd, js, before, after, tck, pairs, warns = sys.argv[1:]
r = json.loads(js)
cpu_us = (int(after) - int(before)) / int(tck) * 1e6 / max(r["requests"], 1)
print("\t".join(map(str, [name, rnd, r["requests"], r["errors"], f'{r["rps"]:.0f}', f'{r["p50_ms"]:.2f}',
                          f'{r["p99_ms"]:.2f}', f"{cpu_us:.0f}", pairs, warns])))
EOF
  log "($name) round $2: $(tail -1 "$WORK/rows.tsv")"
  stop "$PROXY_PID" "$SIDECAR_PID"
  rm -f "$WORK/pairs.jsonl"
}

ORDER=(n m s)
for round in $(seq "$ROUNDS"); do
  for i in 0 1 2; do
    run_scenario "${ORDER[$(( (i + round - 1) % 3 ))]}" "$round"
  done
done

CB_REQUESTS="${BENCH_LITELLM_CALLBACK_REQUESTS:-5000}"
for rate in 0.0 1.0; do
  start_sidecar "$rate"
  log "callback alone, untaken at $rate"
  "$VENV/bin/python" "$ROOT/benches/litellm_callback.py" "$SIDECAR_GRPC" "$CB_REQUESTS" "$CONC" \
    | sed "s/^{/{\"untaken_rate\": $rate, /" | tee -a "$WORK/callback.jsonl" >&2
  stop "$SIDECAR_PID"
done

mkdir -p "$OUT_DIR"
REPORT="$OUT_DIR/litellm-$STAMP.md"
python3 - "$WORK/rows.tsv" "$WORK/callback.jsonl" "$LITELLM_VERSION" "$(git rev-parse --short HEAD)" "$REQUESTS" "$CONC" "$STREAM" > "$REPORT" <<'EOF'
import statistics, sys
import json
path, cbpath, version, commit, requests, conc, stream = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path)]
names = {"n": "(n) proxy, no callback", "m": "(m) callback, untaken 0 %", "s": "(s) callback, untaken 100 %"}
print(f"LiteLLM {version}, commit {commit}, {requests} requests/run, concurrency {conc}, stream={stream}\n")
print("| run | rounds | rps | p50 ms | p99 ms | proxy CPU µs/request | errors | pairs written |")
print("|---|---|---|---|---|---|---|---|")
med = {}
for k in "nms":
    rs = [r for r in rows if r[0] == k]
    if not rs:
        continue
    col = lambda i: [float(r[i]) for r in rs]
    med[k] = {c: statistics.median(col(i)) for c, i in (("p50", 5), ("p99", 6), ("cpu", 7))}
    print(f"| {names[k]} | {len(rs)} | {' / '.join(r[4] for r in rs)} | {' / '.join(r[5] for r in rs)} | "
          f"{' / '.join(r[6] for r in rs)} | {' / '.join(r[7] for r in rs)} | {sum(int(r[3]) for r in rs)} | "
          f"{' / '.join(r[8] for r in rs)} |")
print()
for k in [k for k in "ms" if k in med and "n" in med]:
    d = {c: med[k][c] - med["n"][c] for c in med[k]}
    print(f"- {names[k]} vs (n), medians: CPU {d['cpu']:+.0f} µs/request ({d['cpu'] / med['n']['cpu'] * 100:+.1f} %), "
          f"p50 {d['p50']:+.2f} ms, p99 {d['p99']:+.2f} ms")
print("\nThe callback alone (hooks driven directly, one event loop, concurrency", conc, "):\n")
print("| untaken sampling | logger | requests | process CPU µs/request | pre-call hook p50 / p99 µs | counts |")
print("|---|---|---|---|---|---|")
for line in open(cbpath):
    r = json.loads(line)
    print(f"| {float(r['untaken_rate']) * 100:.0f} % | {r['logger']} | {r['requests']} | {r['cpu_us_per_request']} | "
          f"{r['pre_call_p50_us']} / {r['pre_call_p99_us']} | {r['counts'] or ''} |")
EOF
cat "$REPORT"
log "report: $REPORT"
