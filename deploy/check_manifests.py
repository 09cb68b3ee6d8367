#!/usr/bin/env python3
"""The deployment invariants that are untaken's own, on kustomize renderings.

Usage (run by deploy/validate.sh inside its venv):
    check_manifests.py --untaken CMD --configs-out DIR [--verbose] NAME=rendered.yaml ...

Schemas are kubeconform's job, best practice kube-score's, and the config
untaken's: each config a ConfigMap carries goes through
`untaken check-config --effective-json`, and the checks below read that JSON
(defaults applied, durations in seconds), never the TOML. The issue's checks:
  * terminationGracePeriodSeconds covers server.shutdown_grace (+ a margin);
  * the spool is a writable emptyDir whose sizeLimit holds spool.max_bytes;
  * probes and scrape annotations aim at the addresses untaken listens on;
  * the secrets the config names come from Secrets (env or mounted files);
  * the KafkaTopics sit with the brokers' Strimzi cluster.
Extra checks, each one untaken's own: --config is a mounted ConfigMap file
(else there is no config to check); secret and config files are readable by
untaken's uid 65532; the containers' ephemeral-storage limits exceed the spool
(else the kubelet evicts untaken before the spool is full); max.message.bytes
exceeds server.max_body_bytes (a pair holds three bodies); our topics set
partitions and a strimzi.io/cluster label (the KafkaTopic schema, like
Strimzi's CRD, leaves them optional); the judge reads the
topic the sidecar writes, with no more replicas than that topic's partitions.
DIR receives NAME.toml / NAME-judge.toml, their effective JSON, and NAME.env /
NAME-judge.env: stand-ins for the pod's Secrets, for validate.sh's final
`untaken check-config` (which reads the secrets). Prints one line per problem
and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

SIDECAR_GRACE_MARGIN_S = 10  # the router's own drain before untaken gets SIGTERM
JUDGE_GRACE_MARGIN_S = 5  # after the grace: the producer's flush and the last commit
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588
QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(text) -> int | None:
    m = re.fullmatch(r"(\d+)([kMG]i?|)", str(text)) if text is not None else None
    return int(m[1]) * QUANTITY[m[2]] if m else None


def hostport(text: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"\[?([^\[\]]*?)\]?:(\d{1,5})", text or "")
    return (m[1], int(m[2])) if m else None


def loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dig(table, *keys):
    for k in keys:
        table = (table or {}).get(k)
    return table


def secret_refs(cfg: dict, path: tuple = ()) -> tuple[dict, dict]:
    """The effective config's secret references: {dotted key: env var} and {dotted key: file}."""
    env, files = {}, {}
    for key, v in cfg.items():
        dotted = ".".join(path + (key,))
        if isinstance(v, dict):
            e, f = secret_refs(v, path + (key,))
            env |= e
            files |= f
        elif isinstance(v, str) and re.search(r"(api_key|password|token)_env$", key):
            env[dotted] = v
        elif isinstance(v, str) and re.search(r"(api_key|password|token)_file$", key):
            files[dotted] = v
    return env, files


class Render:
    """One kustomize rendering: its documents, and the problems found."""

    def __init__(self, name: str, path: Path, untaken: list[str], out: Path):
        self.name, self.untaken, self.out = name, untaken, out
        self.docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        self.by_name = {(d["kind"], d["metadata"]["name"]): d for d in self.docs}
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.sidecar: dict | None = None  # the sidecar's effective config
        self.sidecar_topic: str | None = None

    def check(self, cond: bool, where: str, problem: str, ok: str) -> bool:
        line = f"[{self.name} {where}] {ok if cond else problem}"
        (self.notes if cond else self.errors).append(f"ok    {line}" if cond else f"ERROR {line}")
        return cond

    def mounted_files(self, container: dict, pod: dict) -> dict[str, tuple[str, str, str, int]]:
        """Absolute path in the container -> (configMap|secret, object name, key, file mode)."""
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        files = {}
        for mount in container.get("volumeMounts") or []:
            vol = volumes.get(mount["name"], {})
            mode = dig(vol, "projected", "defaultMode") or 0o644
            sources = list(dig(vol, "projected", "sources") or [])
            sources += [{k: vol[k] | {"name": vol[k].get("name", vol[k].get("secretName"))}} for k in ("configMap", "secret") if k in vol]
            for source in sources:
                for kind, src in source.items():
                    obj = self.by_name.get(("ConfigMap" if kind == "configMap" else "Secret", src.get("name")), {})
                    items = src.get("items") or [{"key": k, "path": k} for k in {**obj.get("data", {}), **obj.get("stringData", {})}]
                    for item in items:
                        files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = (kind, src["name"], item["key"], item.get("mode", src.get("defaultMode", mode)))
        return files

    def effective_config(self, where: str, pod: dict, c: dict, stem: str, what: str) -> tuple[dict, dict] | None:
        """The --config ConfigMap file through `untaken check-config --effective-json`, and the mounted files."""
        args = c.get("args") or []
        files = self.mounted_files(c, pod)
        path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
        src = files.get(path)
        if not self.check(src is not None and src[0] == "configMap", where,
                          f"--config {path} is not a file of a ConfigMap mounted in the {c['name']} container",
                          f"--config {path} is ConfigMap {src and src[1]}"):
            return None
        self.readable(where, pod, path, src[3])
        toml, out = self.out / f"{stem}.toml", self.out / f"{stem}.json"
        toml.write_text(self.by_name[("ConfigMap", src[1])]["data"][src[2]])
        env = {k: v for k, v in os.environ.items() if not (k.startswith("UNTAKEN_") and "__" in k)}
        run = subprocess.run(self.untaken + ["check-config", "--effective-json", str(out), str(toml)],
                             env=env, capture_output=True, text=True)
        if not self.check(run.returncode == 0, where, f"untaken check-config rejects the {what}: {run.stderr.strip()}",
                          f"untaken check-config accepts the {what}"):
            return None
        return json.loads(out.read_text()), files

    def check_grace(self, where: str, pod: dict, cfg: dict, margin: int, why: str) -> None:
        grace = cfg["server"]["shutdown_grace"]
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        self.check(tgps >= grace + margin, where,
                   f"terminationGracePeriodSeconds {tgps} < server.shutdown_grace {grace:g}s + {margin}s {why}",
                   f"terminationGracePeriodSeconds {tgps} >= shutdown_grace {grace:g}s + {margin}s")

    def check_admin(self, where: str, doc: dict, c: dict, admin: tuple[str, int]) -> None:
        """admin_listen is a containerPort beyond loopback, and the scrape annotation names it."""
        ports = {p["containerPort"] for p in c.get("ports") or []}
        self.check(admin[1] in ports and not loopback(admin[0]), where,
                   f"server.admin_listen {admin} must be a containerPort bound beyond loopback (probes and Prometheus reach the pod IP)",
                   f"admin_listen port {admin[1]} is reachable")
        scrape = dig(doc, "spec", "template", "metadata", "annotations", "prometheus.io/port")
        self.check(scrape in (None, str(admin[1])), where, f"prometheus.io/port {scrape} != admin_listen port {admin[1]}",
                   "scrape annotation matches admin_listen")

    def check_sidecar(self, doc: dict, stand_in: dict) -> None:
        pod, where = doc["spec"]["template"]["spec"], f"{doc['kind']}/{doc['metadata']['name']}"
        sidecars = [c for c in pod.get("initContainers") or [] if c["name"] == "untaken"]
        if not self.check(len(sidecars) == 1 and sidecars[0].get("restartPolicy") == "Always", where,
                          "untaken must be one initContainers entry with restartPolicy: Always (a native sidecar)",
                          "untaken is a native sidecar"):
            return
        c = sidecars[0]
        found = self.effective_config(where, pod, c, self.name, f"untaken.toml rendered into {self.name}'s ConfigMap")
        if found is None:
            return
        cfg, files = self.sidecar, _ = found
        self.check_grace(where, pod, cfg, SIDECAR_GRACE_MARGIN_S, "for the router's drain")
        self.check_spool(where, pod, c, cfg)
        self.check_probes(where, doc, c, cfg)
        self.secret_sources(where, pod, c, cfg, files, stand_in)
        kafka = dig(cfg, "sink", "kafka") or {}
        if kafka.get("topic"):
            self.sidecar_topic = kafka["topic"]
            t = self.our_topic(kafka["topic"], "sink.kafka.topic", kafka["brokers"])
            if t is not None:
                body, most = cfg["server"]["max_body_bytes"], dig(t, "spec", "config", "max.message.bytes") or KAFKA_DEFAULT_MAX_MESSAGE_BYTES
                self.check(most > body, f"KafkaTopic/{t['metadata']['name']}",
                           f"max.message.bytes {most} must exceed server.max_body_bytes {body} (a pair holds a request and two answers)",
                           "message size fits")

    def check_spool(self, where: str, pod: dict, c: dict, cfg: dict) -> None:
        sdir, max_bytes = str(cfg["spool"]["dir"]).rstrip("/"), cfg["spool"]["max_bytes"]
        mount = next((m for m in c.get("volumeMounts") or [] if m["mountPath"].rstrip("/") == sdir), {})
        vol = next((v for v in pod.get("volumes") or [] if v["name"] == mount.get("name")), {})
        limit = quantity(dig(vol, "emptyDir", "sizeLimit"))
        if not self.check(limit is not None and not mount.get("readOnly"), where,
                          f"spool.dir {sdir} must be a writable emptyDir mount with a sizeLimit", f"spool {sdir} is an emptyDir"):
            return
        self.check(max_bytes < limit, where, f"spool.max_bytes {max_bytes} does not fit the emptyDir sizeLimit {limit}",
                   f"spool.max_bytes {max_bytes} < sizeLimit {limit}")
        pod_limit = sum(quantity(dig(x, "resources", "limits", "ephemeral-storage")) or 0
                        for x in (pod.get("containers") or []) + (pod.get("initContainers") or []))
        self.check(pod_limit > limit, where,
                   f"the containers' ephemeral-storage limits ({pod_limit}) must exceed the spool sizeLimit {limit}, or the kubelet evicts the pod first",
                   f"ephemeral-storage limits {pod_limit} > spool sizeLimit {limit}")

    def check_probes(self, where: str, doc: dict, c: dict, cfg: dict) -> None:
        listen, admin = hostport(cfg["server"]["listen"]), hostport(cfg["server"]["admin_listen"])
        self.check_admin(where, doc, c, admin)
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(name) or {}
            for net in ("grpc", "httpGet", "tcpSocket"):
                port = ports.get(dig(probe, net, "port"), dig(probe, net, "port"))
                for setting, hp in (("server.listen", listen), ("server.admin_listen", admin)):
                    if port is not None and hp[1] == port:
                        self.check(not loopback(hp[0]), where, f"{name}.{net} probes port {port}, but {setting} binds {hp[0]}: "
                                   "the kubelet probes the pod IP, so it can never succeed", f"{name} reaches {setting}")
            addr = next((a.split("=", 1)[1] for a in dig(probe, "exec", "command") or [] if a.startswith("-addr=")), None)
            if addr is not None:
                self.check((hostport(addr) or ("", 0))[1] == listen[1], where,
                           f"{name} checks {addr}, but server.listen is {cfg['server']['listen']}", f"{name} checks server.listen")

    def secret_sources(self, where: str, pod: dict, c: dict, cfg: dict, files: dict, stand_in: dict) -> None:
        """The environment variables and files the config names come from Secrets; `stand_in` gets
        the UNTAKEN_ variables that point check-config at stand-ins for them."""
        env_refs, file_refs = secret_refs(cfg)
        env = {e["name"]: e for e in c.get("env") or []}
        for key, var in env_refs.items():
            ref = dig(env.get(var), "valueFrom", "secretKeyRef")
            if self.check(ref is not None, where, f"{key} = {var!r}: the container needs env {var} from a Secret (secretKeyRef)",
                          f"env {var} comes from Secret {ref and ref['name']}"):
                self.secret_has_key(where, ref["name"], ref["key"], f"env {var}")
                stand_in[var] = "stand-in-secret"
        for key, path in file_refs.items():
            src = files.get(path)
            if self.check(src is not None and src[0] == "secret", where, f"{key} {path} is not a file of a Secret mounted in {c['name']}",
                          f"{path} comes from Secret {src and src[1]}"):
                self.secret_has_key(where, src[1], src[2], path)
                self.readable(where, pod, path, src[3])
                stand_in["UNTAKEN_" + key.upper().replace(".", "__")] = str(self.out / "stand-in.secret")

    def check_judge(self, doc: dict, c: dict, stand_in: dict) -> None:
        pod, where = doc["spec"]["template"]["spec"], f"{doc['kind']}/{doc['metadata']['name']}"
        found = self.effective_config(where, pod, c, f"{self.name}-judge", f"judge.toml rendered into {self.name}'s judge ConfigMap")
        if found is None:
            return
        cfg, files = found
        self.check_grace(where, pod, cfg, JUDGE_GRACE_MARGIN_S, "to flush and commit")
        admin = hostport(cfg["server"]["admin_listen"])
        self.check_admin(where, doc, c, admin)
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        for name, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
            get = dig(c, name, "httpGet") or {}
            port = ports.get(get.get("port"), get.get("port"))
            self.check(port == admin[1] and get.get("path") == path, where,
                       f"{name} must be httpGet {path} on the admin port {admin[1]} (found {get or 'none'})", f"{name} is {path} on the admin port")
        self.secret_sources(where, pod, c, cfg, files, stand_in)
        kafka = cfg["kafka"]
        pairs = kafka["pairs_topic"]
        if self.sidecar_topic is not None:
            self.check(pairs == self.sidecar_topic, where, f"kafka.pairs_topic {pairs!r} is not the topic the sidecar writes ({self.sidecar_topic!r})",
                       "reads the sidecar's pairs topic")
        pairs_topic = self.topic(pairs)
        if pairs_topic is not None and "partitions" in pairs_topic["spec"]:
            replicas, partitions = doc["spec"].get("replicas", 1), pairs_topic["spec"]["partitions"]
            self.check(replicas <= partitions, where,
                       f"replicas {replicas} > {partitions} partitions of {pairs!r}: the extra judge replicas get no partition and idle",
                       f"replicas {replicas} <= {partitions} partitions")
        self.our_topic(kafka["grades_topic"], "kafka.grades_topic", kafka["brokers"])

    def topic(self, name: str) -> dict | None:
        return next((d for d in self.docs if d["kind"] == "KafkaTopic" and (dig(d, "spec", "topicName") or d["metadata"]["name"]) == name), None)

    def our_topic(self, name: str, setting: str, brokers: str) -> dict | None:
        """The KafkaTopic untaken writes `name` to: present, partitions set, managed by the brokers' Strimzi cluster."""
        t = self.topic(name)
        if not self.check(t is not None, "KafkaTopic", f"no KafkaTopic for {setting} {name!r}", f"topic {name} exists"):
            return None
        where = f"KafkaTopic/{t['metadata']['name']}"
        self.check("partitions" in t["spec"], where, "spec.partitions must be set: the broker default would decide how many judges can work",
                   "partitions set")
        cluster, ns = dig(t, "metadata", "labels", "strimzi.io/cluster"), t["metadata"].get("namespace")
        self.check(bool(cluster), where, "no strimzi.io/cluster label: no Topic Operator creates the topic untaken needs",
                   f"managed by Strimzi cluster {cluster}")
        host = (hostport(brokers.split(",")[0]) or ("", 0))[0]
        m = re.match(r"^([a-z0-9-]+)-kafka-bootstrap\.([a-z0-9-]+)(\.|$)", host)
        if m:  # Strimzi: <cluster>-kafka-bootstrap.<namespace>; its Topic Operator watches that namespace
            self.check((cluster, ns) == (m[1], m[2]), where,
                       f"strimzi.io/cluster={cluster!r} in namespace {ns!r}, but the brokers are cluster {m[1]!r} in {m[2]!r}",
                       "topic sits with the brokers' Strimzi cluster")
        return t

    def readable(self, where: str, pod: dict, path: str, mode: int) -> None:
        """Projected files are root-owned: uid 65532 reads them as fsGroup or as other."""
        fs_group = dig(pod, "securityContext", "fsGroup") is not None
        self.check(bool(mode & 0o004 or (fs_group and mode & 0o040)), where,
                   f"{path} has mode {oct(mode)}: the untaken user cannot read it", f"{path} is readable")

    def secret_has_key(self, where: str, name: str, key: str, what: str) -> None:
        secret = self.by_name.get(("Secret", name))
        if secret is None:
            self.notes.append(f"note  [{self.name} {where}] {what}: Secret {name} is not in this rendering (must exist in the cluster)")
            return
        keys = {**secret.get("data", {}), **secret.get("stringData", {})}
        self.check(key in keys, where, f"{what}: Secret {name} has no key {key!r}", f"Secret {name} has key {key}")

    def run(self) -> None:
        (self.out / "stand-in.secret").write_text("stand-in-secret\n")
        workloads = [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
        judges = []
        sidecar_env: dict[str, str] = {}
        for w in workloads:
            judge = [c for c in w["spec"]["template"]["spec"].get("containers") or [] if (c.get("args") or [""])[0] == "judge"]
            if judge:
                judges.append((w, judge[0]))
            else:
                self.check_sidecar(w, sidecar_env)
        self.check(self.sidecar is not None, "manifests",
                   "no workload runs the untaken sidecar", "untaken found")
        self.write_env(self.name, sidecar_env)
        for w, c in judges:  # after the sidecar: the judge is checked against the topic it writes
            judge_env: dict[str, str] = {}
            self.check_judge(w, c, judge_env)
            self.write_env(f"{self.name}-judge", judge_env)

    def write_env(self, stem: str, env: dict) -> None:
        (self.out / f"{stem}.env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--untaken", required=True, help="the untaken command line (shell words), e.g. target/debug/untaken")
    ap.add_argument("--configs-out", type=Path, required=True, help="where the configs, their JSON and stand-in env go")
    ap.add_argument("--verbose", action="store_true", help="print passing checks too")
    ap.add_argument("renders", nargs="+", metavar="NAME=FILE")
    a = ap.parse_args()
    errors = 0
    for spec in a.renders:
        name, _, file = spec.partition("=")
        r = Render(name, Path(file), shlex.split(a.untaken), a.configs_out)
        r.run()
        for line in r.errors + [n for n in r.notes if a.verbose or n.startswith("note")]:
            print(line)
        errors += len(r.errors)
    if errors:
        print(f"check_manifests: FAILED with {errors} error(s)")
        return 1
    print(f"check_manifests: OK ({len(a.renders)} renderings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
