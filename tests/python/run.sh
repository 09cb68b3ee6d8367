#!/usr/bin/env bash
# Runs the cross-language check: a Python router (gRPC stubs generated from
# proto/ only) calls Mirror/Complete, a Python grader reads the pairs from Kafka.
# Usage: run.sh GRPC_ADDR BOOTSTRAP TOPIC
# Installs its packages into a venv under ${UNTAKEN_TOOLS:-~/.cache/untaken/tools}.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${UNTAKEN_TOOLS:-$HOME/.cache/untaken/tools}"
venv="$tools/pyinterop-$(sha256sum "$here/requirements.txt" | cut -c1-12)"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.installed" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" \
    || "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  touch "$venv/.installed"
fi
gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
"$venv/bin/python" -m grpc_tools.protoc -I "$root/proto" --python_out="$gen" --grpc_python_out="$gen" \
  "$root/proto/untaken/v1/mirror.proto"
PYTHONPATH="$gen" exec "$venv/bin/python" "$here/router_and_grader.py" "$@"
