#!/usr/bin/env bash
# Creates (or reuses) the venv that tests/litellm.rs and benches/litellm.sh run a real
# LiteLLM proxy from: requirements.txt (pinned LiteLLM) plus this package, built from
# source so its gRPC stubs are generated from ../../proto. Prints the venv's path.
#
# The venv lives under ${UNTAKEN_TOOLS:-~/.cache/untaken/tools}, keyed by a hash of
# requirements.txt; the package is reinstalled whenever its sources or the proto change.
#
# `venv.sh --check` installs nothing: it prints the venv's path if it is there and
# current, else exits 1 (benches/litellm.sh; `bash benches/tools.sh litellm` fetches).
set -euo pipefail
check_only=""
[ "${1:-}" = "--check" ] && check_only=1
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${UNTAKEN_TOOLS:-$HOME/.cache/untaken/tools}"
venv="$tools/litellm-$(sha256sum "$here/requirements.txt" | cut -c1-12)"
src_hash() {
  cat "$here"/pyproject.toml "$here"/setup.py "$here"/untaken_litellm/*.py "$root"/proto/untaken/v1/mirror.proto | sha256sum | cut -c1-16
}
if [ -n "$check_only" ]; then
  if [ -x "$venv/bin/python" ] && [ -f "$venv/.installed" ] && [ "$(cat "$venv/.package" 2>/dev/null)" = "$(src_hash)" ]; then
    echo "$venv"
    exit 0
  fi
  echo "venv.sh: the LiteLLM venv $venv is missing or older than integrations/litellm/" >&2
  exit 1
fi
mkdir -p "$tools"
# One installer at a time (tests run in parallel threads; a benchmark may run too).
exec 9> "$tools/litellm-venv.lock"
flock 9
pip_install() {
  # One retry: a registry hiccup should not fail the suite.
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2 \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check "$@" >&2
}
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv" >&2
  pip_install -r "$here/requirements.txt"
  touch "$venv/.installed"
fi
src_hash="$(src_hash)"
if [ "$(cat "$venv/.package" 2>/dev/null)" != "$src_hash" ]; then
  # Not editable and not from a copy: pip builds the wheel from this checkout, running
  # setup.py's grpcio-tools step against ../../proto.
  pip_install --force-reinstall --no-deps "$here"
  rm -rf "$here/build" "$here"/*.egg-info   # setuptools' in-tree leftovers
  echo "$src_hash" > "$venv/.package"
fi
echo "$venv"
