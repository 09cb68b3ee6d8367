#!/usr/bin/env python3
"""Validate kustomize-rendered untaken manifests without a cluster.

Usage (run by deploy/validate.sh inside its venv):
    check_manifests.py --k8s-version 1.33.0 --schemas deploy/schemas \
        NAME=rendered.yaml [NAME=rendered.yaml ...]

For every rendered document:
  * built-in kinds: kubernetes-validate, strict (unknown fields fail);
  * custom resources: a JSON schema from --schemas (kind.lower().json);
    a kind with neither is an error, never skipped.
Then the untaken invariants: native sidecar, security context, mounts, probes,
grace period, and the untaken.toml carried by the rendered ConfigMap (known
keys only, consistent with the manifests and the KafkaTopic).

Prints one line per problem and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
import tomllib
from pathlib import Path

try:
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(f"check_manifests.py: missing Python package ({e}); run it through deploy/validate.sh")

UNTAKEN_UID = 65532
GRACE_MARGIN_S = 10

# The untaken.toml key schema, mirroring src/config.rs (serde
# deny_unknown_fields: the Rust side rejects unknown keys). "*" = any table
# name; a dict value = sub-table; a list with one dict = array of tables;
# "map" = free-form table of strings. The authoritative check is the crate's
# own parser (tests/deploy_manifests.rs); this one runs without building it.
ROUTE_KEYS = {
    "url": str, "model": str, "counterfactual": str, "timeout": "duration",
    "api_key_env": str, "api_key_file": str,
    "input_usd_per_mtok": "number", "output_usd_per_mtok": "number",
    "max_rps": int, "max_concurrency": int, "budget_usd_per_hour": "number",
}
ALLOWED_KEYS = {
    "server": {
        "listen": str, "admin_listen": str, "max_body_bytes": int, "max_labels": int,
        "max_label_bytes": int, "shutdown_grace": "duration", "auth_token_file": str,
        "auth_token_env": str, "tls": {"cert_file": str, "key_file": str, "client_ca_file": str},
    },
    "log": {"level": str, "format": str},
    "sampling": {
        "salt": str, "default_rate": "number",
        "rules": [{"slice": str, "route_taken": str, "rate": "number"}],
    },
    "routes": {"*": ROUTE_KEYS},
    "pairing": {"timeout": "duration", "max_pending": int},
    "queue": {"capacity": int},
    "sink": {
        "type": str, "encoding": str,
        "kafka": {
            "brokers": str, "topic": str, "sasl_password_file": str, "sasl_password_env": str,
            "delivery_timeout": "duration", "librdkafka": "map",
        },
        "file": {"path": str},
    },
    "spool": {"dir": str, "max_bytes": int, "fsync_interval": "duration"},
    "redaction": {"rules": [{"name": str, "pattern": str, "replacement": str}]},
}

DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60,
                  "h": 3600, "hr": 3600, "d": 86400}
QUANTITY_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                   "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class Checker:
    def __init__(self, k8s_version: str, schemas: Path):
        self.k8s_version = k8s_version
        self.schemas = schemas
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.configs: dict[str, dict] = {}

    # -- reporting ---------------------------------------------------------
    def err(self, where: str, msg: str) -> None:
        self.errors.append(f"ERROR [{where}] {msg}")

    def note(self, where: str, msg: str) -> None:
        self.notes.append(f"ok    [{where}] {msg}")

    # -- schema validation -------------------------------------------------
    def validate_schema(self, render: str, doc: dict) -> None:
        kind, api = doc.get("kind"), doc.get("apiVersion")
        name = (doc.get("metadata") or {}).get("name")
        where = f"{render} {kind}/{name}"
        if not kind or not api or not name:
            self.err(where, "document lacks apiVersion, kind or metadata.name")
            return
        try:
            version = kubernetes_validate.validate(doc, self.k8s_version, strict=True)
            self.note(where, f"{api} matches the Kubernetes {version} schema (strict)")
            return
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path) or "<root>"
            self.err(where, f"Kubernetes {e.version} schema (strict): {path}: {e.message}")
            return
        except kubernetes_validate.SchemaNotFoundError:
            pass
        schema_file = self.schemas / f"{kind.lower()}.json"
        if not schema_file.is_file():
            self.err(where, f"no schema for {api} {kind}: kubernetes-validate has none and "
                            f"{schema_file} does not exist (add one; kinds are never skipped)")
            return
        schema = json.loads(schema_file.read_text())
        validator = jsonschema.Draft202012Validator(schema)
        errs = sorted(validator.iter_errors(doc), key=lambda e: list(e.path))
        for e in errs:
            path = ".".join(str(p) for p in e.path) or "<root>"
            self.err(where, f"{schema_file.name}: {path}: {e.message}")
        if not errs:
            self.note(where, f"{api} matches {schema_file.name}")

    # -- untaken.toml ------------------------------------------------------
    def check_config_keys(self, where: str, table: dict, allowed: dict, prefix: str) -> None:
        for key, value in table.items():
            path = f"{prefix}{key}"
            spec = allowed.get(key, allowed.get("*"))
            if spec is None:
                self.err(where, f"untaken.toml: unknown key `{path}` (the Rust config rejects "
                                f"unknown keys; if it gained this key, add it to ALLOWED_KEYS in "
                                f"deploy/check_manifests.py)")
            elif isinstance(spec, dict):
                if not isinstance(value, dict):
                    self.err(where, f"untaken.toml: `{path}` must be a table")
                else:
                    self.check_config_keys(where, value, spec, path + ".")
            elif isinstance(spec, list):
                if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                    self.err(where, f"untaken.toml: `{path}` must be an array of tables ([[{path}]])")
                else:
                    for i, item in enumerate(value):
                        self.check_config_keys(where, item, spec[0], f"{path}[{i}].")
            elif spec == "map":
                if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                    self.err(where, f"untaken.toml: `{path}` must be a table of strings")
            elif spec == "duration":
                if parse_duration(value) is None:
                    self.err(where, f"untaken.toml: `{path}` = {value!r} is not a duration like \"30s\"")
            elif spec == "number":
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    self.err(where, f"untaken.toml: `{path}` must be a number")
            elif spec is int:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    self.err(where, f"untaken.toml: `{path}` must be a non-negative integer")
            elif not isinstance(value, spec):
                self.err(where, f"untaken.toml: `{path}` must be a {spec.__name__}")

    def check_config_semantics(self, where: str, cfg: dict) -> None:
        routes = cfg.get("routes", {})
        sampling = cfg.get("sampling", {})
        rates = [("sampling.default_rate", sampling.get("default_rate"))]
        rates += [(f"sampling.rules[{i}].rate", r.get("rate")) for i, r in enumerate(sampling.get("rules", []))]
        for path, rate in rates:
            if isinstance(rate, (int, float)) and not 0 <= rate <= 1:
                self.err(where, f"untaken.toml: `{path}` = {rate} is outside [0, 1]")
        for i, rule in enumerate(sampling.get("rules", [])):
            if "route_taken" in rule and rule["route_taken"] not in routes:
                self.err(where, f"untaken.toml: sampling.rules[{i}].route_taken = "
                                f"{rule['route_taken']!r} names no [routes.*] table")
        for name, route in routes.items():
            cf = route.get("counterfactual")
            if cf is not None and (cf not in routes or cf == name):
                self.err(where, f"untaken.toml: routes.{name}.counterfactual = {cf!r} must name another route")
        sink = cfg.get("sink", {})
        if sink.get("type") == "kafka" and "kafka" not in sink:
            self.err(where, "untaken.toml: sink.type = \"kafka\" needs a [sink.kafka] table")
        for path, value in (("server.listen", cfg.get("server", {}).get("listen")),
                            ("server.admin_listen", cfg.get("server", {}).get("admin_listen"))):
            if value is not None and split_hostport(value) is None:
                self.err(where, f"untaken.toml: `{path}` = {value!r} is not host:port")

    # -- the Deployment ----------------------------------------------------
    def check_workload(self, render: str, doc: dict, by_name: dict) -> bool:
        """Checks one workload; returns True if it runs untaken."""
        pod = ((doc.get("spec") or {}).get("template") or {}).get("spec") or {}
        meta = ((doc.get("spec") or {}).get("template") or {}).get("metadata") or {}
        where = f"{render} {doc['kind']}/{doc['metadata']['name']}"
        inits = pod.get("initContainers") or []
        mains = pod.get("containers") or []
        is_untaken = lambda c: c.get("name") == "untaken" or image_repo(c.get("image", "")).endswith("untaken")
        in_main = [c for c in mains if is_untaken(c)]
        in_init = [c for c in inits if is_untaken(c)]
        if not in_main and not in_init:
            return False
        if in_main:
            self.err(where, "untaken is in `containers`; it must be a native sidecar: an entry in "
                            "`initContainers` with `restartPolicy: Always` (see deploy/README.md for <1.29)")
        if len(in_init) != 1:
            if in_init:
                self.err(where, f"expected one untaken init container, found {len(in_init)}")
            return True
        c = in_init[0]
        if c.get("restartPolicy") != "Always":
            self.err(where, f"initContainers[untaken].restartPolicy is {c.get('restartPolicy')!r}, "
                            f"must be 'Always' (native sidecar; otherwise the pod waits for it to exit)")
        else:
            self.note(where, "untaken is a native sidecar (initContainers, restartPolicy Always)")
        if not mains:
            self.err(where, "no main container (the router) next to the untaken sidecar")

        # Security context (container level, falling back to pod level where k8s does).
        csc, psc = c.get("securityContext") or {}, pod.get("securityContext") or {}
        eff = lambda k: csc.get(k, psc.get(k))
        want = {
            "runAsNonRoot": eff("runAsNonRoot") is True,
            f"runAsUser {UNTAKEN_UID}": eff("runAsUser") == UNTAKEN_UID,
            "readOnlyRootFilesystem": csc.get("readOnlyRootFilesystem") is True,
            "allowPrivilegeEscalation false": csc.get("allowPrivilegeEscalation") is False,
            "capabilities.drop [ALL]": "ALL" in ((csc.get("capabilities") or {}).get("drop") or []),
            "seccompProfile RuntimeDefault": (eff("seccompProfile") or {}).get("type") == "RuntimeDefault",
        }
        bad = [k for k, ok in want.items() if not ok]
        if bad:
            self.err(where, "untaken securityContext must set: " + ", ".join(bad))
        else:
            self.note(where, "untaken securityContext: " + ", ".join(want))
        if eff("privileged"):
            self.err(where, "untaken must not be privileged")

        res = c.get("resources") or {}
        for kind_ in ("requests", "limits"):
            missing = [r for r in ("cpu", "memory") if r not in (res.get(kind_) or {})]
            if missing:
                self.err(where, f"untaken resources.{kind_} lacks {', '.join(missing)}")

        # The config file named in args, from a mounted ConfigMap.
        args = (c.get("command") or []) + (c.get("args") or [])
        if "--config" not in args or args.index("--config") + 1 >= len(args):
            self.err(where, f"untaken args {args} lack `--config PATH`")
            return True
        if "serve" not in args:
            self.err(where, f"untaken args {args} lack the `serve` subcommand")
        config_path = args[args.index("--config") + 1]
        files, dirs = mounted_files(c, pod.get("volumes") or [], by_name)
        src = files.get(config_path)
        if src is None or src[0] != "configMap":
            self.err(where, f"--config {config_path} is not a file of a ConfigMap mounted in the untaken container")
            return True
        cm = by_name.get(("ConfigMap", src[1]))
        if cm is None or src[2] not in (cm.get("data") or {}):
            self.err(where, f"ConfigMap {src[1]} with key {src[2]} (for {config_path}) is not in the rendering")
            return True
        try:
            cfg = tomllib.loads(cm["data"][src[2]])
        except tomllib.TOMLDecodeError as e:
            self.err(where, f"{config_path} (ConfigMap {src[1]}) is not valid TOML: {e}")
            return True
        self.configs[render] = cfg
        self.check_readable(where, pod, config_path, src[3])
        self.check_config_keys(where, cfg, ALLOWED_KEYS, "")
        self.check_config_semantics(where, cfg)
        self.note(where, f"{config_path} from ConfigMap {src[1]} parses; keys are all known")

        server = cfg.get("server", {})
        # Grace period vs drain time.
        grace = parse_duration(server.get("shutdown_grace", "30s")) or 0
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        if tgps < grace + GRACE_MARGIN_S:
            self.err(where, f"terminationGracePeriodSeconds {tgps} < server.shutdown_grace {grace:g}s "
                            f"+ {GRACE_MARGIN_S}s margin")
        else:
            self.note(where, f"terminationGracePeriodSeconds {tgps} >= shutdown_grace {grace:g}s + {GRACE_MARGIN_S}s")

        # Spool on a writable emptyDir, large enough.
        spool = cfg.get("spool", {})
        sdir = spool.get("dir")
        mount = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath", "").rstrip("/") == str(sdir).rstrip("/")), None)
        vol = next((v for v in pod.get("volumes") or [] if mount and v.get("name") == mount.get("name")), None)
        if mount is None or vol is None:
            self.err(where, f"spool.dir {sdir} is not a volumeMount of the untaken container "
                            f"(readOnlyRootFilesystem: it needs its own volume)")
        elif "emptyDir" not in vol and "persistentVolumeClaim" not in vol and "ephemeral" not in vol:
            self.err(where, f"spool volume {vol['name']} must be an emptyDir (or a PVC), not {sorted(vol)}")
        elif mount.get("readOnly"):
            self.err(where, f"spool mount {sdir} is readOnly")
        else:
            limit = parse_quantity(((vol.get("emptyDir") or {}).get("sizeLimit")))
            if "emptyDir" in vol and limit is None:
                self.err(where, f"spool emptyDir {vol['name']} has no sizeLimit")
            elif limit is not None and isinstance(spool.get("max_bytes"), int) and spool["max_bytes"] > limit:
                self.err(where, f"spool.max_bytes {spool['max_bytes']} exceeds the emptyDir sizeLimit ({limit} bytes)")
            else:
                self.note(where, f"spool {sdir} on emptyDir {vol['name']} (sizeLimit {limit} >= max_bytes {spool.get('max_bytes')})")

        # API keys from env (Secrets), SASL password from a mounted Secret file.
        env = {e.get("name"): e for e in c.get("env") or []}
        for rname, route in (cfg.get("routes") or {}).items():
            var = route.get("api_key_env")
            if var is None:
                continue
            e = env.get(var)
            if e is None:
                self.err(where, f"routes.{rname}.api_key_env = {var!r} but the untaken container has no env {var}")
                continue
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                self.err(where, f"env {var} must come from a Secret (valueFrom.secretKeyRef), not a literal")
            else:
                self.check_secret_key(where, by_name, ref.get("name"), ref.get("key"), f"env {var}")
        pw_file = ((cfg.get("sink") or {}).get("kafka") or {}).get("sasl_password_file")
        if pw_file is not None:
            src = files.get(pw_file)
            if src is None or src[0] != "secret":
                self.err(where, f"sink.kafka.sasl_password_file {pw_file} is not a file of a Secret mounted in the untaken container")
            else:
                self.check_secret_key(where, by_name, src[1], src[2], pw_file)
                self.note(where, f"{pw_file} comes from Secret {src[1]} key {src[2]}")
                self.check_readable(where, pod, pw_file, src[3])

        # Ports, probes and scrape annotations vs listen addresses.
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        listen = split_hostport(server.get("listen", ""))
        admin = split_hostport(server.get("admin_listen", ""))
        if admin is not None:
            if admin[1] not in ports.values():
                self.err(where, f"server.admin_listen port {admin[1]} is not a containerPort of untaken")
            if is_loopback(admin[0]):
                self.err(where, f"server.admin_listen {server['admin_listen']} is loopback: Prometheus cannot scrape it")
            ann = (meta.get("annotations") or {}).get("prometheus.io/port")
            if ann is not None and str(ann) != str(admin[1]):
                self.err(where, f"prometheus.io/port annotation {ann} != server.admin_listen port {admin[1]}")
        probe_kinds = []
        for pname in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(pname)
            if not probe:
                continue
            for net in ("grpc", "httpGet", "tcpSocket"):
                if net in probe:
                    port = probe[net].get("port")
                    port = ports.get(port, port)
                    for label, hp in (("server.listen", listen), ("server.admin_listen", admin)):
                        if hp and hp[1] == port and is_loopback(hp[0]):
                            self.err(where, f"{pname}.{net} targets port {port}, but {label} binds {hp[0]}: the kubelet "
                                            f"probes the pod IP, so this probe can never succeed")
            if "exec" in probe:
                cmd = probe["exec"].get("command") or []
                addr = next((a.split("=", 1)[1] for a in cmd if a.startswith("-addr=")), None)
                if cmd and Path(cmd[0]).name == "grpc_health_probe" and listen and addr is not None:
                    hp = split_hostport(addr)
                    if hp is None or hp[1] != listen[1]:
                        self.err(where, f"{pname} checks {addr}, but server.listen is {server.get('listen')}")
            probe_kinds.append(pname)
        for pname in ("livenessProbe", "readinessProbe"):
            if pname not in probe_kinds:
                self.err(where, f"untaken has no {pname}")
        if "startupProbe" not in probe_kinds:
            self.notes.append(f"note  [{where}] untaken has no startupProbe: the router may start before untaken listens")
        return True

    def check_readable(self, where: str, pod: dict, path: str, mode: int) -> None:
        """Projected/ConfigMap/Secret files are root-owned; group is fsGroup if set."""
        has_fsgroup = (pod.get("securityContext") or {}).get("fsGroup") is not None
        if not (mode & 0o004 or (has_fsgroup and mode & 0o040)):
            self.err(where, f"{path} has mode {oct(mode)}: uid {UNTAKEN_UID} cannot read it "
                            f"({'no group-read bit' if has_fsgroup else 'not world-readable and the pod sets no fsGroup'})")

    def check_secret_key(self, where, by_name, name, key, what) -> None:
        secret = by_name.get(("Secret", name))
        if secret is None:
            self.notes.append(f"note  [{where}] {what}: Secret {name} is not in this rendering (must exist in the cluster)")
            return
        keys = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
        if key not in keys:
            self.err(where, f"{what}: Secret {name} has no key {key!r} (has {sorted(keys)})")

    def check_kafkatopics(self, render: str, docs: list[dict]) -> None:
        cfg = self.configs.get(render)
        topics = [d for d in docs if d.get("kind") == "KafkaTopic"]
        if cfg is None:
            return
        kafka = (cfg.get("sink") or {}).get("kafka") or {}
        want = kafka.get("topic")
        if not want:
            return
        match = [t for t in topics if ((t.get("spec") or {}).get("topicName") or t["metadata"]["name"]) == want]
        if not match:
            self.err(render, f"no KafkaTopic for sink.kafka.topic {want!r}")
            return
        t = match[0]
        where = f"{render} KafkaTopic/{t['metadata']['name']}"
        spec = t.get("spec") or {}
        conf = spec.get("config") or {}
        replicas, isr = spec.get("replicas"), conf.get("min.insync.replicas")
        if isinstance(replicas, int) and isinstance(isr, int) and not isr < replicas:
            self.err(where, f"min.insync.replicas {isr} must be below replicas {replicas} "
                            f"(else one broker down blocks acks=all producers)")
        mmb = conf.get("max.message.bytes")
        body = (cfg.get("server") or {}).get("max_body_bytes")
        if isinstance(mmb, int) and isinstance(body, int) and mmb <= body:
            self.err(where, f"max.message.bytes {mmb} must exceed server.max_body_bytes {body} (a pair holds a request and two answers)")
        # Strimzi bootstrap service "<cluster>-kafka-bootstrap.<namespace>[...]:port".
        host = (split_hostport(str(kafka.get("brokers", "")).split(",")[0]) or ("", 0))[0]
        m = re.match(r"^(?P<cluster>[a-z0-9-]+)-kafka-bootstrap\.(?P<ns>[a-z0-9-]+)(\.|$)", host)
        if m:
            label = (t["metadata"].get("labels") or {}).get("strimzi.io/cluster")
            if label != m["cluster"]:
                self.err(where, f"label strimzi.io/cluster={label!r} but sink.kafka.brokers points at cluster {m['cluster']!r}")
            if t["metadata"].get("namespace") != m["ns"]:
                self.err(where, f"namespace {t['metadata'].get('namespace')!r} but the Kafka cluster (brokers {host}) is in "
                                f"{m['ns']!r}; the Topic Operator only watches its own namespace")
        self.note(where, f"matches sink.kafka.topic {want!r} and the brokers' Strimzi cluster/namespace")

    def check_render(self, render: str, path: Path) -> None:
        try:
            docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        except yaml.YAMLError as e:
            self.err(render, f"{path} is not valid YAML: {e}")
            return
        if not docs:
            self.err(render, f"{path} rendered no documents")
            return
        by_name: dict[tuple, dict] = {}
        seen = set()
        for d in docs:
            if not isinstance(d, dict):
                self.err(render, f"document is not a mapping: {str(d)[:80]}")
                continue
            self.validate_schema(render, d)
            meta = d.get("metadata") or {}
            ident = (d.get("apiVersion"), d.get("kind"), meta.get("namespace"), meta.get("name"))
            if ident in seen:
                self.err(render, f"duplicate resource {ident}")
            seen.add(ident)
            by_name.setdefault((d.get("kind"), meta.get("name")), d)
        workloads = [d for d in docs if isinstance(d, dict) and d.get("kind") in
                     ("Deployment", "StatefulSet", "DaemonSet")]
        found = [w for w in workloads if self.check_workload(render, w, by_name)]
        if not found:
            self.err(render, "no workload runs an untaken container")
        self.check_kafkatopics(render, docs)
        self.note(render, f"{len(docs)} documents")

    def compare_configs(self) -> None:
        """Overlays copy untaken.toml whole; their key set must not drift from the first render's."""
        if len(self.configs) < 2:
            return
        (base_name, base), *rest = self.configs.items()
        base_keys = key_paths(base)
        for name, cfg in rest:
            keys = key_paths(cfg)
            for k in sorted(base_keys - keys):
                self.err(name, f"untaken.toml lacks `{k}`, which {base_name}'s has")
            for k in sorted(keys - base_keys):
                self.err(name, f"untaken.toml has `{k}`, which {base_name}'s lacks")


# -- helpers ---------------------------------------------------------------
def parse_duration(value) -> float | None:
    if not isinstance(value, str) or not value.strip():
        return None
    total, pos, s = 0.0, 0, value.replace(" ", "")
    for m in re.finditer(r"(\d+(?:\.\d+)?)([a-z]+)", s):
        if m.start() != pos or m.group(2) not in DURATION_UNITS:
            return None
        total += float(m.group(1)) * DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(s) else None


def parse_quantity(value) -> int | None:
    if value is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kMGT]i?|)", str(value))
    if not m or m.group(2) not in QUANTITY_SUFFIX:
        return None
    return int(float(m.group(1)) * QUANTITY_SUFFIX[m.group(2)])


def split_hostport(value: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", value or "")
    return (m.group(1), int(m.group(2))) if m else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def image_repo(image: str) -> str:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image.rsplit(":", 1)[0] if ":" in last else image


def key_paths(cfg: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        if path == "sink.kafka.librdkafka":
            out.add(path)  # free-form: overlays may add client settings
        elif isinstance(v, dict):
            out |= key_paths(v, path + ".")
        elif isinstance(v, list) and v and all(isinstance(i, dict) for i in v):
            for item in v:
                out |= key_paths(item, path + "[].")
        else:
            out.add(path)
    return out


def mounted_files(c: dict, volumes: list, by_name: dict):
    """Maps absolute file paths in container c to (source kind, name, key, mode)."""
    vols = {v.get("name"): v for v in volumes}
    files, dirs = {}, {}
    for m in c.get("volumeMounts") or []:
        v = vols.get(m.get("name"))
        if v is None:
            continue
        root = m.get("mountPath", "").rstrip("/")
        dirs[root] = v
        sources = []
        if "configMap" in v:
            sources.append(("configMap", v["configMap"], v["configMap"].get("defaultMode", 0o644)))
        if "secret" in v:
            s = dict(v["secret"], name=v["secret"].get("secretName"))
            sources.append(("secret", s, v["secret"].get("defaultMode", 0o644)))
        if "projected" in v:
            mode = v["projected"].get("defaultMode", 0o644)
            for s in v["projected"].get("sources") or []:
                for kind in ("configMap", "secret"):
                    if kind in s:
                        sources.append((kind, s[kind], mode))
        for kind, src, mode in sources:
            items = src.get("items")
            if items is None:
                obj = by_name.get(("ConfigMap" if kind == "configMap" else "Secret", src.get("name"))) or {}
                items = [{"key": k, "path": k} for k in (obj.get("data") or {}) | (obj.get("stringData") or {})]
            for it in items:
                full = f"{root}/{it['path']}"
                if m.get("subPath"):
                    if it["path"] != m["subPath"]:
                        continue
                    full = root
                files[full] = (kind, src.get("name"), it["key"], it.get("mode", mode))
    return files, dirs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k8s-version", required=True)
    ap.add_argument("--schemas", type=Path, required=True)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("renders", nargs="+", metavar="NAME=FILE")
    a = ap.parse_args()
    ck = Checker(a.k8s_version, a.schemas)
    for spec in a.renders:
        name, _, file = spec.partition("=")
        ck.check_render(name, Path(file))
    ck.compare_configs()
    for line in ck.notes if a.verbose else [n for n in ck.notes if n.startswith("note")]:
        print(line)
    for line in ck.errors:
        print(line)
    if ck.errors:
        print(f"check_manifests: FAILED with {len(ck.errors)} error(s)")
        return 1
    print(f"check_manifests: OK ({len(a.renders)} renderings, Kubernetes {a.k8s_version} strict schemas, "
          f"{len(ck.notes)} checks/notes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
