#!/usr/bin/env bash
# Validates deploy/ without a cluster, with the ecosystem's own tools:
#   1. installs, once, pinned kustomize, kubeconform, kube-score and promtool
#      (go install) and kubernetes-validate + PyYAML (pip, in a venv) into
#      ${UNTAKEN_TOOLS:-$HOME/.cache/untaken/tools};
#   2. renders deploy/k8s/base, every deploy/k8s/overlays/* and deploy/monitoring;
#   3. kubeconform -strict: built-in kinds against the Kubernetes JSON schemas
#      that kubernetes-validate ships, PrometheusRule against prometheus-operator's
#      own CRD (fetched once with `go mod download`, converted), KafkaTopic
#      against deploy/schemas/kafkatopic.json; a kind without a schema fails;
#   4. kube-score on every overlay (what gets applied; the base keeps
#      placeholder `latest` tags) and on deploy/monitoring;
#   5. promtool check rules + promtool test rules (deploy/monitoring/rules.test.yaml);
#   6. check_manifests.py: the invariants that are untaken's own (sidecar and
#      judge worker), read from `untaken check-config --effective-json` of each
#      rendered ConfigMap's untaken.toml / judge.toml; then `untaken check-config`
#      on each with stand-ins for the pod's Secrets.
# Exits non-zero with a message on the first failing step.
#
# Environment:
#   UNTAKEN_TOOLS        tool cache (default ~/.cache/untaken/tools)
#   UNTAKEN_K8S_VERSION  Kubernetes schema version (default 1.33.0)
#   UNTAKEN_DEPLOY_DIR   deploy/ tree to check (default: this script's dir)
#   UNTAKEN_BIN          the untaken binary (default: `cargo run --bin untaken`)
#   VERBOSE=1            print every passing check too
set -euo pipefail

KUSTOMIZE_VERSION=v5.8.2             # newest that builds with Go 1.26 (v5.8.3 needs Go 1.27)
KUBECONFORM_VERSION=v0.8.0
KUBE_SCORE_VERSION=v1.20.0
PROMETHEUS_VERSION=v0.316.0          # the Go module version of Prometheus 3.x's promtool
PROMETHEUS_OPERATOR_VERSION=v0.85.0  # its Go module ships the PrometheusRule CRD
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

# --- Go tools -------------------------------------------------------------------
# go_tool NAME MODULE/cmd/PATH VERSION: installs into $tools/NAME-VERSION/NAME once
# and prints the binary's path.
go_tool() {
  local name=$1 pkg=$2 version=$3 dir=$tools/$1-$3
  if [[ ! -x $dir/$name ]]; then
    command -v go >/dev/null || fail "'go' not found: it is needed once to install $name $version into $dir"
    step "installing $name $version with $(go version) (first run only, 1-5 min)" >&2
    rm -rf "$dir.tmp"
    # GOTOOLCHAIN=local: never switch to another Go; fail clearly instead.
    if ! GOTOOLCHAIN=local GOBIN="$dir.tmp" CGO_ENABLED=0 \
        go install "$pkg@$version" >"$tools/$name-install.log" 2>&1; then
      tail -n 30 "$tools/$name-install.log" >&2
      fail "go install $pkg@$version failed (log: $tools/$name-install.log)"
    fi
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir/$name"
}
kustomize=$(go_tool kustomize sigs.k8s.io/kustomize/kustomize/v5 "$KUSTOMIZE_VERSION")
kversion=$("$kustomize" version 2>&1) || fail "$kustomize does not run: $kversion"
[[ $kversion == *"$KUSTOMIZE_VERSION"* ]] || fail "$kustomize reports '$kversion', expected $KUSTOMIZE_VERSION (delete it)"
kubeconform=$(go_tool kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION")
kube_score=$(go_tool kube-score github.com/zegl/kube-score/cmd/kube-score "$KUBE_SCORE_VERSION")
promtool=$(go_tool promtool github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION")
for t in "$kubeconform -v" "$kube_score version" "$promtool --version"; do
  $t >/dev/null 2>&1 || fail "'$t' does not run (delete $(dirname "${t%% *}"))"
done

# --- kubernetes-validate (venv) ----------------------------------------------
venv=$tools/venv-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
if [[ ! -f $venv/.complete ]]; then
  command -v "$PYTHON" >/dev/null || fail "'$PYTHON' not found: Python >= 3.11 is needed"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || fail "$("$PYTHON" --version 2>&1) is too old: Python >= 3.11 is needed"
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

# --- Kubernetes JSON schemas for kubeconform -------------------------------------
# kubernetes-validate (PyPI) ships the strict JSON schemas of every Kubernetes
# release in kubeconform's directory layout, but refers to its definitions as
# "/api/_definitions.json", which only its own loader resolves. A copy with those
# references pointing at the file itself feeds kubeconform offline.
schema_src=$("$venv/bin/python" -c 'import kubernetes_validate, pathlib; print(pathlib.Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema")')
schemas=$tools/k8s-schemas-$KUBERNETES_VALIDATE_VERSION
sdir=$schemas/v$K8S_VERSION-local-strict
if [[ ! -f $sdir/.complete ]]; then
  [[ -d $schema_src/v$K8S_VERSION-local-strict ]] \
    || fail "kubernetes-validate $KUBERNETES_VALIDATE_VERSION has no schemas for Kubernetes $K8S_VERSION (UNTAKEN_K8S_VERSION)"
  rm -rf "$sdir" && mkdir -p "$sdir"
  cp "$schema_src/v$K8S_VERSION-local-strict/"*.json "$sdir/"
  sed -i "s#\"/api/_definitions.json\##\"file://$sdir/_definitions.json\##g" "$sdir/"*.json
  touch "$sdir/.complete"
fi

# --- CRD schemas for kubeconform ----------------------------------------------------
# The PrometheusRule CRD as prometheus-operator publishes it (its Go module ships
# example/prometheus-operator-crd), converted as kubeconform's openapi2jsonschema.py
# does: openAPIV3Schema, int-or-string as either, and strict (additionalProperties
# false wherever properties are listed). Strimzi publishes its CRDs in no package
# registry: deploy/schemas/kafkatopic.json is a faithful subset (see its description).
crds=$tools/crd-schemas-prometheus-operator-$PROMETHEUS_OPERATOR_VERSION
if [[ ! -f $crds/.complete ]]; then
  command -v go >/dev/null || fail "'go' not found: it is needed once to fetch the PrometheusRule CRD into $crds"
  step "fetching the PrometheusRule CRD of prometheus-operator $PROMETHEUS_OPERATOR_VERSION (first run only)"
  mod=$(GOTOOLCHAIN=local GOFLAGS=-modcacherw go mod download -json \
    "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION" 2>"$tools/crd-download.log") \
    || { cat "$tools/crd-download.log" >&2; fail "go mod download prometheus-operator@$PROMETHEUS_OPERATOR_VERSION failed"; }
  rm -rf "$crds" && mkdir -p "$crds"
  "$venv/bin/python" - "$crds" "$mod" <<'PY' || fail "cannot convert the PrometheusRule CRD into a JSON schema"
import json, pathlib, sys, yaml
mod = json.loads(sys.argv[2])
crd = yaml.safe_load(open(pathlib.Path(mod["Dir"]) / "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml"))
def strict(node):
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: strict(v) for k, v in node.items()}
    if node.pop("x-kubernetes-int-or-string", False):
        node = {"oneOf": [{"type": "string"}, {"type": "integer"}], **{k: v for k, v in node.items() if k != "type"}}
    if "properties" in node and "additionalProperties" not in node:
        node["additionalProperties"] = False
    return node
(version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
schema = strict(version["schema"]["openAPIV3Schema"])
schema["description"] = f"{crd['metadata']['name']} v1, prometheus-operator {mod['Version']}: " + schema.get("description", "")
json.dump(schema, open(pathlib.Path(sys.argv[1]) / "prometheusrule.json", "w"), indent=1)
PY
  touch "$crds/.complete"
fi

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
render monitoring "$deploy/monitoring"
step "rendered ${#renders[@]} kustomizations with kustomize $KUSTOMIZE_VERSION"

# --- validate ------------------------------------------------------------------
files=("${renders[@]#*=}")
if ! "$kubeconform" -strict -summary -kubernetes-version "$K8S_VERSION" \
    -schema-location "$schemas/{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json" \
    -schema-location "$crds/{{ .ResourceKind }}.json" \
    -schema-location "$deploy/schemas/{{ .ResourceKind }}.json" "${files[@]}"; then
  fail "kubeconform: manifests do not match their schemas (see above)"
fi

# Findings that do not apply are suppressed where they arise, with the reason:
# `kube-score/ignore` annotations in the manifests.
scored=()
for r in "${renders[@]}"; do [[ $r == base=* ]] || scored+=("${r#*=}"); done
if ! "$kube_score" score --kubernetes-version "v${K8S_VERSION%.*}" --exit-one-on-warning \
    --enable-optional-test container-seccomp-profile --color never "${scored[@]}"; then
  fail "kube-score: best-practice findings (see above; suppress one only with a kube-score/ignore annotation saying why)"
fi

# promtool reads plain rule files: the PrometheusRule's spec is one. Every
# alert needs a summary, a runbook_url anchor that deploy/README.md has, and a
# promtool test in which it fires.
mkdir -p "$out/promtool"
"$venv/bin/python" - "$out/monitoring.yaml" "$out/promtool/rules.yaml" "$deploy/monitoring/rules.test.yaml" "$deploy/README.md" <<'PY' \
  || fail "deploy/monitoring/prometheusrule.yaml: alerts lack summaries, runbooks or tests (see above)"
import re, sys, yaml
rendered, rules_out, tests, readme = sys.argv[1:]
rules = [d for d in yaml.safe_load_all(open(rendered)) if d and d["kind"] == "PrometheusRule"]
assert len(rules) == 1, f"expected one PrometheusRule in deploy/monitoring, found {len(rules)}"
yaml.safe_dump(rules[0]["spec"], open(rules_out, "w"), sort_keys=False)
anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
           for h in re.findall(r"^#+ (.+)$", open(readme).read(), re.M)}
fired = {t["alertname"] for test in yaml.safe_load(open(tests))["tests"]
         for t in test.get("alert_rule_test", []) if t.get("exp_alerts")}
problems = []
for group in rules[0]["spec"]["groups"]:
    for rule in (r for r in group["rules"] if "alert" in r):
        name, ann = rule["alert"], rule.get("annotations", {})
        url = ann.get("runbook_url", "")
        if not ann.get("summary"):
            problems.append(f"{name}: no summary annotation")
        if not url.startswith("deploy/README.md#") or url.split("#", 1)[1] not in anchors:
            problems.append(f"{name}: runbook_url {url!r} is no heading anchor of deploy/README.md")
        if name not in fired:
            problems.append(f"{name}: no test in rules.test.yaml expects it to fire")
for p in problems:
    print(f"ERROR {p}")
sys.exit(1 if problems else print("validate.sh: every alert has a summary, a runbook in deploy/README.md and a promtool test that fires it"))
PY
cp "$deploy/monitoring/rules.test.yaml" "$out/promtool/"
"$promtool" check rules "$out/promtool/rules.yaml" || fail "promtool check rules: deploy/monitoring/prometheusrule.yaml is invalid"
# The dashboard's PromQL, parsed by promtool too: each query as a recording rule,
# with Grafana's variables given plausible values.
"$venv/bin/python" - "$deploy/monitoring/untaken-dashboard.json" "$out/promtool/dashboard.yaml" <<'PY' \
  || fail "cannot read the dashboard's queries"
import json, sys, yaml
d = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in d["panels"] for t in p.get("targets", [])]
subst = {"$__rate_interval": "5m", "$namespace": ".*", "$pod": ".*", "$judge_namespace": ".*"}
for k, v in subst.items():
    exprs = [e.replace(k, v) for e in exprs]
rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)]
yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(sys.argv[2], "w"))
PY
"$promtool" check rules --lint=none "$out/promtool/dashboard.yaml" \
  || fail "promtool: a query of deploy/monitoring/untaken-dashboard.json is not valid PromQL (see above)"
(cd "$out/promtool" && "$promtool" test rules rules.test.yaml) \
  || fail "promtool test rules: deploy/monitoring/rules.test.yaml failed (see above)"

# untaken's own invariants, on the effective config of each rendered ConfigMap
# (check_manifests.py runs `untaken check-config --effective-json` on it), then
# `untaken check-config` once more with stand-ins for the pod's Secrets, which it reads.
if [[ -n ${UNTAKEN_BIN:-} ]]; then
  untaken=("$UNTAKEN_BIN")
else
  untaken=(cargo run --quiet --locked --manifest-path "$here/../Cargo.toml" --bin untaken --)
fi
args=(--configs-out "$out" --untaken "$(printf '%q ' "${untaken[@]}")")
[[ ${VERBOSE:-0} == 1 ]] && args+=(--verbose)
untaken_renders=()
for r in "${renders[@]}"; do [[ $r == monitoring=* ]] || untaken_renders+=("$r"); done
if ! "$venv/bin/python" "$here/check_manifests.py" "${args[@]}" "${untaken_renders[@]}"; then
  fail "manifests break untaken's deployment invariants (see ERROR lines above)"
fi
for r in "${untaken_renders[@]}"; do
  name=${r%%=*}
  for config in "$name" "$name-judge"; do
    [[ -f $out/$config.toml ]] || continue
    mapfile -t stand_ins <"$out/$config.env"
    if ! env "${stand_ins[@]}" "${untaken[@]}" check-config "$out/$config.toml"; then
      fail "untaken check-config rejects $config.toml (rendered into $name's ConfigMaps) with stand-ins for its Secrets"
    fi
  done
done

step "OK in $((SECONDS - start))s (kustomize $KUSTOMIZE_VERSION, kubeconform $KUBECONFORM_VERSION strict with Kubernetes $K8S_VERSION schemas and the PrometheusRule CRD of prometheus-operator $PROMETHEUS_OPERATOR_VERSION, kube-score $KUBE_SCORE_VERSION, promtool $PROMETHEUS_VERSION, untaken check-config)"
