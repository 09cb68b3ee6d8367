#!/usr/bin/env bash
# Fetches what the benchmarks run besides untaken, once, into cache dirs. The
# benchmarks themselves fetch and install nothing: when something is missing they
# stop and name this script. Nothing is installed system-wide, no root needed.
#
#   bash benches/tools.sh [fetch]   ghz, kcat and the Kafka jars (benches/run.sh, judge.sh)
#   bash benches/tools.sh litellm   the LiteLLM venv (benches/litellm.sh)
#   bash benches/tools.sh check     exit 1 naming what `fetch` would still fetch
#
# Where things go:
#   ghz v0.121.0  ${UNTAKEN_TOOLS:-~/.cache/untaken/tools}/bin/ghz, built with `go install`
#                 (the Go module proxy; needs Go).
#   kcat          the one on PATH if there is one; otherwise Debian's kcat, librdkafka1 and
#                 libyajl2 packages, fetched with `apt-get download` and unpacked with
#                 `dpkg -x` under $UNTAKEN_TOOLS/kcat, run through $UNTAKEN_TOOLS/bin/kcat.
#   Kafka jars    tests/kafka/broker.sh fetch (the integration tests' cache, Maven).
#   LiteLLM       integrations/litellm/venv.sh (a venv under $UNTAKEN_TOOLS, pip).
#
# Sourced by the benchmarks for `require_tools` and the tool paths (GHZ, KCAT).
set -euo pipefail

TOOLS_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${UNTAKEN_TOOLS:-${HOME:-/tmp}/.cache/untaken/tools}"
GHZ_VERSION="v0.121.0" # builds with Go 1.26
GHZ="$TOOLS/bin/ghz"
KCAT_CACHED="$TOOLS/bin/kcat"
TOOLS_SCRIPT="bash benches/tools.sh"

tools_die() {
  echo "benches/tools.sh: $*" >&2
  exit 1
}

kcat_path() { # the kcat to use, or nothing
  if [[ -x "$KCAT_CACHED" ]]; then
    echo "$KCAT_CACHED"
  else
    command -v kcat 2>/dev/null || true
  fi
}

kafka_jars_fetched() {
  bash "$TOOLS_ROOT/tests/kafka/broker.sh" check >/dev/null 2>&1
}

# What `fetch` would still fetch, one per line.
missing_tools() {
  [[ -x "$GHZ" ]] || echo "ghz $GHZ_VERSION (expected at $GHZ)"
  [[ -n "$(kcat_path)" ]] || echo "kcat (not on PATH, not at $KCAT_CACHED)"
  kafka_jars_fetched || echo "the Kafka broker jars (tests/kafka/broker.sh fetch)"
}

# For the benchmarks: stop with a message naming the fetch step when a tool is
# missing; otherwise set GHZ and KCAT.
require_tools() {
  local missing
  missing="$(missing_tools)"
  if [[ -n "$missing" ]]; then
    printf 'missing: %s\n' "$missing" | sed '2,$s/^/         /' >&2
    tools_die "the benchmark installs nothing itself; fetch the tools once with: $TOOLS_SCRIPT"
  fi
  KCAT="$(kcat_path)"
  export GHZ KCAT
}

fetch_ghz() {
  [[ -x "$GHZ" ]] && return 0
  command -v go >/dev/null || tools_die "go not found (needed once to build ghz $GHZ_VERSION)"
  echo "fetching ghz $GHZ_VERSION into $TOOLS/bin (go install)" >&2
  mkdir -p "$TOOLS/bin"
  GOBIN="$TOOLS/bin" GOMODCACHE="$TOOLS/go/mod" GOCACHE="$TOOLS/go/build" GOPATH="$TOOLS/go" GOFLAGS=-modcacherw \
    go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION" || tools_die "go install ghz failed"
}

fetch_kcat() {
  [[ -n "$(kcat_path)" ]] && return 0
  command -v apt-get >/dev/null && command -v dpkg >/dev/null ||
    tools_die "kcat is not on PATH and there is no apt-get/dpkg to fetch Debian's; install kcat yourself"
  local dir="$TOOLS/kcat"
  echo "fetching Debian's kcat into $dir (apt-get download, dpkg -x)" >&2
  rm -rf "$dir"
  mkdir -p "$dir/debs" "$dir/root" "$TOOLS/bin"
  (cd "$dir/debs" && apt-get download kcat librdkafka1 libyajl2) || tools_die "apt-get download kcat failed"
  local deb
  for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root"; done
  local bin="$dir/root/usr/bin/kcat" lib="$dir/root/usr/lib/x86_64-linux-gnu"
  [[ -x "$bin" ]] || tools_die "no usr/bin/kcat in the fetched packages"
  cat >"$KCAT_CACHED" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$bin" "\$@"
EOF
  chmod +x "$KCAT_CACHED"
  "$KCAT_CACHED" -V >/dev/null || tools_die "the fetched kcat does not run (a library missing?)"
}

tools_main() {
  case "${1:-fetch}" in
    fetch)
      fetch_ghz
      fetch_kcat
      bash "$TOOLS_ROOT/tests/kafka/broker.sh" fetch >/dev/null
      missing="$(missing_tools)"
      [[ -z "$missing" ]] || tools_die "still missing: $missing"
      echo "ghz: $GHZ"
      echo "kcat: $(kcat_path)"
      echo "kafka jars: $(bash "$TOOLS_ROOT/tests/kafka/broker.sh" check)"
      ;;
    litellm) bash "$TOOLS_ROOT/integrations/litellm/venv.sh" ;;
    check)
      missing="$(missing_tools)"
      [[ -z "$missing" ]] || tools_die "missing: $(echo "$missing" | paste -sd ';') -- run: $TOOLS_SCRIPT"
      echo "all benchmark tools present"
      ;;
    *) tools_die "usage: $TOOLS_SCRIPT [fetch|litellm|check]" ;;
  esac
}

# Run, not sourced.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  tools_main "$@"
fi
