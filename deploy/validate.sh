#!/usr/bin/env bash
# Validates the deploy/ manifests without a cluster:
#   1. installs pinned kustomize (go install) and kubernetes-validate (pip, in
#      a venv) into ${UNTAKEN_TOOLS:-$HOME/.cache/untaken/tools} if missing;
#   2. renders deploy/k8s/base and every deploy/k8s/overlays/*;
#   3. runs deploy/check_manifests.py on the renderings: strict Kubernetes
#      schemas for built-in kinds, deploy/schemas/*.json for custom resources
#      (never skipped), and the untaken invariants (native sidecar, security
#      context, spool emptyDir, grace period, config keys, topic).
# Exits non-zero with a message on the first failing step.
#
# Environment:
#   UNTAKEN_TOOLS        tool cache (default ~/.cache/untaken/tools)
#   UNTAKEN_K8S_VERSION  Kubernetes schema version (default 1.33.0)
#   UNTAKEN_DEPLOY_DIR   deploy/ tree to check (default: this script's dir)
#   VERBOSE=1            print every passing check too
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2             # newest that builds with Go 1.26 (v5.8.3 needs Go 1.27)
KUBERNETES_VALIDATE_VERSION=1.37.0   # ships JSON schemas for Kubernetes 1.25 .. 1.37
K8S_VERSION=${UNTAKEN_K8S_VERSION:-1.33.0}
PYTHON=${PYTHON:-python3}

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
deploy=${UNTAKEN_DEPLOY_DIR:-$here}
tools=${UNTAKEN_TOOLS:-${HOME:?HOME is unset; set UNTAKEN_TOOLS}/.cache/untaken/tools}

fail() { echo "validate.sh: FAILED: $*" >&2; exit 1; }
step() { echo "validate.sh: $*"; }
start=$SECONDS

mkdir -p "$tools" || fail "cannot create tool cache $tools"
# Serialise concurrent runs (e.g. parallel test binaries) on the cache.
if command -v flock >/dev/null; then
  exec 9>"$tools/.lock"
  flock 9
fi

# --- kustomize ---------------------------------------------------------------
kdir=$tools/kustomize-$KUSTOMIZE_VERSION
kustomize=$kdir/kustomize
if [[ ! -x $kustomize ]]; then
  command -v go >/dev/null || fail "'go' not found: it is needed once to install kustomize $KUSTOMIZE_VERSION into $kdir"
  step "installing kustomize $KUSTOMIZE_VERSION with $(go version) (first run only, ~1 min)"
  rm -rf "$kdir.tmp"
  # GOTOOLCHAIN=local: never switch to another Go; fail clearly instead.
  if ! GOTOOLCHAIN=local GOBIN="$kdir.tmp" CGO_ENABLED=0 \
      go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" >"$tools/kustomize-install.log" 2>&1; then
    tail -n 30 "$tools/kustomize-install.log" >&2
    fail "go install sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION failed (log: $tools/kustomize-install.log)"
  fi
  rm -rf "$kdir" && mv "$kdir.tmp" "$kdir"
fi
kversion=$("$kustomize" version 2>&1) || fail "$kustomize does not run: $kversion"
[[ $kversion == *"$KUSTOMIZE_VERSION"* ]] || fail "$kustomize reports '$kversion', expected $KUSTOMIZE_VERSION (delete $kdir)"

# --- kubernetes-validate (venv) ----------------------------------------------
venv=$tools/venv-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
if [[ ! -f $venv/.complete ]]; then
  command -v "$PYTHON" >/dev/null || fail "'$PYTHON' not found: Python >= 3.11 is needed"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$("$PYTHON" --version 2>&1) is too old: Python >= 3.11 is needed (tomllib)"
  step "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv (first run only)"
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv" >"$tools/venv.log" 2>&1 \
    || { cat "$tools/venv.log" >&2; fail "python -m venv $venv failed (Debian: apt-get install python3-venv)"; }
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q \
      -r "$here/requirements-validate.txt" >"$tools/pip-install.log" 2>&1; then
    tail -n 30 "$tools/pip-install.log" >&2
    fail "pip install -r deploy/requirements-validate.txt failed (log: $tools/pip-install.log)"
  fi
  touch "$venv/.complete"
fi
kvversion=$("$venv/bin/python" -m kubernetes_validate --version 2>&1) \
  || fail "kubernetes-validate does not run in $venv: $kvversion (delete $venv)"
[[ $kvversion == *"$KUBERNETES_VALIDATE_VERSION"* ]] \
  || fail "kubernetes-validate reports '$kvversion', expected $KUBERNETES_VALIDATE_VERSION (delete $venv)"

# --- render --------------------------------------------------------------------
out=$(mktemp -d "${TMPDIR:-/tmp}/untaken-validate.XXXXXX")
trap 'rm -rf "$out"' EXIT
renders=()
render() { # name dir
  local name=$1 dir=$2
  [[ -f $dir/kustomization.yaml ]] || fail "$dir has no kustomization.yaml"
  if ! "$kustomize" build "$dir" >"$out/$name.yaml" 2>"$out/$name.err"; then
    cat "$out/$name.err" >&2
    fail "kustomize build $dir failed"
  fi
  renders+=("$name=$out/$name.yaml")
}
render base "$deploy/k8s/base"
shopt -s nullglob
overlays=("$deploy"/k8s/overlays/*/)
((${#overlays[@]})) || fail "no overlays under $deploy/k8s/overlays"
for o in "${overlays[@]}"; do
  render "overlay-$(basename "$o")" "${o%/}"
done
step "rendered ${#renders[@]} kustomizations with kustomize $KUSTOMIZE_VERSION"

# --- validate ------------------------------------------------------------------
args=(--k8s-version "$K8S_VERSION" --schemas "$deploy/schemas")
[[ ${VERBOSE:-0} == 1 ]] && args+=(--verbose)
if ! "$venv/bin/python" "$here/check_manifests.py" "${args[@]}" "${renders[@]}"; then
  fail "manifests are invalid (see ERROR lines above)"
fi
step "OK in $((SECONDS - start))s (kustomize $KUSTOMIZE_VERSION, kubernetes-validate $KUBERNETES_VALIDATE_VERSION, Kubernetes $K8S_VERSION strict)"
