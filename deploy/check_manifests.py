#!/usr/bin/env python3
"""The deployment invariants that are untaken's own, on kustomize renderings.

Usage (run by deploy/validate.sh inside its venv):
    check_manifests.py [--configs-out DIR] [--verbose] NAME=rendered.yaml ...

Schemas are kubeconform's job, best practice kube-score's, and the config's
keys and values `untaken check-config`'s (all run by validate.sh). This script
checks how the untaken sidecar fits its pod, per rendering:
  * untaken is a native sidecar whose --config is a mounted ConfigMap file;
  * terminationGracePeriodSeconds leaves room for server.shutdown_grace;
  * the spool is a writable emptyDir whose sizeLimit holds spool.max_bytes and
    fits the pod's ephemeral-storage limits;
  * probes and scrape annotations aim at the addresses untaken listens on;
  * the secrets the config names come from Secrets readable by untaken;
  * the KafkaTopic matches sink.kafka.topic and the brokers' Strimzi cluster;
and how the judge worker (a container running `untaken judge`) fits its own:
  * its --config is a mounted ConfigMap file, its grace period covers
    server.shutdown_grace, its httpGet probes hit /live and /ready on
    server.admin_listen (beyond loopback), scraped there;
  * the secrets its config names come from Secrets;
  * it reads the topic the sidecar writes, its grades topic has a KafkaTopic
    with the brokers' Strimzi cluster, and it has no more replicas than the
    pairs topic has partitions (the extra ones would idle).
With --configs-out it writes each rendering's untaken.toml and the environment
that stands in for its Secrets, for `untaken check-config` (see validate.sh).
Prints one line per problem and exits 1 if there is any.
"""
from __future__ import annotations

import argparse
import ipaddress
import re
import sys
import tomllib
from pathlib import Path

import yaml

GRACE_MARGIN_S = 10  # the router's own drain before untaken gets SIGTERM
DURATION_S = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}
QUANTITY = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
# Config settings naming a secret file -> the UNTAKEN_ variable that overrides it.
SECRET_FILES = {("sink", "kafka", "sasl_password_file"): "UNTAKEN_SINK__KAFKA__SASL_PASSWORD_FILE",
                ("server", "auth_token_file"): "UNTAKEN_SERVER__AUTH_TOKEN_FILE"}
JUDGE_SECRET_FILES = {("kafka", "sasl_password_file"): "UNTAKEN_KAFKA__SASL_PASSWORD_FILE",
                      ("judge", "pairwise", "api_key_file"): "UNTAKEN_JUDGE__PAIRWISE__API_KEY_FILE"}
JUDGE_FLUSH_MARGIN_S = 5  # after the grace: the producer's flush and the last commit


def seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(text))
    if not m:
        raise ValueError(f"unsupported duration {text!r}")
    return float(m[1]) * DURATION_S[m[2]]


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


def dig(table: dict, *keys):
    for k in keys:
        table = (table or {}).get(k)
    return table


class Render:
    """One kustomize rendering: its documents by (kind, name), and the problems found."""

    def __init__(self, name: str, path: Path):
        self.name = name
        self.docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        self.by_name = {(d["kind"], d["metadata"]["name"]): d for d in self.docs}
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.config: dict | None = None
        self.config_text = ""
        self.stand_in_env: dict[str, str] = {}
        self.judge: dict | None = None
        self.judge_text = ""
        self.judge_env: dict[str, str] = {}

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
            sources = [s for s in dig(vol, "projected", "sources") or []]
            sources += [{k: vol[k] | {"name": vol[k].get("name", vol[k].get("secretName"))}} for k in ("configMap", "secret") if k in vol]
            for source in sources:
                for kind, src in source.items():
                    obj = self.by_name.get(("ConfigMap" if kind == "configMap" else "Secret", src.get("name")), {})
                    items = src.get("items") or [{"key": k, "path": k} for k in {**obj.get("data", {}), **obj.get("stringData", {})}]
                    for item in items:
                        files[f"{mount['mountPath'].rstrip('/')}/{item['path']}"] = (kind, src["name"], item["key"], item.get("mode", src.get("defaultMode", mode)))
        return files

    def check_workload(self, doc: dict) -> None:
        pod = doc["spec"]["template"]["spec"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        sidecars = [c for c in pod.get("initContainers") or [] if c["name"] == "untaken"]
        if not self.check(len(sidecars) == 1 and sidecars[0].get("restartPolicy") == "Always", where,
                          "untaken must be one initContainers entry with restartPolicy: Always (a native sidecar)",
                          "untaken is a native sidecar"):
            return
        c = sidecars[0]
        found = self.config_map_file(where, pod, c)
        if found is None:
            return
        self.config_text, files = found
        cfg = self.config = tomllib.loads(self.config_text)

        self.check_grace(where, pod, cfg, "30s", GRACE_MARGIN_S, "for the router's drain")
        self.check_spool(where, pod, c, cfg)
        self.check_addresses(where, doc, c, cfg)
        self.check_secrets(where, pod, c, cfg, files)

    def check_grace(self, where: str, pod: dict, cfg: dict, default: str, margin: int, why: str) -> None:
        """The pod's grace period covers server.shutdown_grace plus `margin` seconds (`why`)."""
        grace = seconds(dig(cfg, "server", "shutdown_grace") or default)
        tgps = pod.get("terminationGracePeriodSeconds", 30)
        self.check(tgps >= grace + margin, where,
                   f"terminationGracePeriodSeconds {tgps} < server.shutdown_grace {grace:g}s + {margin}s {why}",
                   f"terminationGracePeriodSeconds {tgps} >= shutdown_grace {grace:g}s + {margin}s")

    def check_spool(self, where: str, pod: dict, c: dict, cfg: dict) -> None:
        sdir = str(dig(cfg, "spool", "dir")).rstrip("/")
        mount = next((m for m in c.get("volumeMounts") or [] if m["mountPath"].rstrip("/") == sdir), {})
        vol = next((v for v in pod.get("volumes") or [] if v["name"] == mount.get("name")), {})
        limit = quantity(dig(vol, "emptyDir", "sizeLimit"))
        max_bytes = dig(cfg, "spool", "max_bytes") or 256 * 2**20
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

    def check_addresses(self, where: str, doc: dict, c: dict, cfg: dict) -> None:
        listen, admin = hostport(dig(cfg, "server", "listen")), hostport(dig(cfg, "server", "admin_listen"))
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        annotations = dig(doc, "spec", "template", "metadata", "annotations") or {}
        if admin:
            self.check(admin[1] in ports.values() and not loopback(admin[0]), where,
                       f"server.admin_listen {admin} must be a containerPort bound beyond loopback (Prometheus scrapes the pod IP)",
                       f"admin_listen port {admin[1]} is scrapeable")
            scrape = annotations.get("prometheus.io/port")
            self.check(scrape in (None, str(admin[1])), where, f"prometheus.io/port {scrape} != admin_listen port {admin[1]}",
                       "scrape annotation matches admin_listen")
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(name) or {}
            self.check(name == "startupProbe" or bool(probe), where, f"untaken has no {name}", f"untaken has a {name}")
            for net in ("grpc", "httpGet", "tcpSocket"):
                port = ports.get(dig(probe, net, "port"), dig(probe, net, "port"))
                for setting, hp in (("server.listen", listen), ("server.admin_listen", admin)):
                    if port is not None and hp and hp[1] == port:
                        self.check(not loopback(hp[0]), where, f"{name}.{net} probes port {port}, but {setting} binds {hp[0]}: "
                                   "the kubelet probes the pod IP, so it can never succeed", f"{name} reaches {setting}")
            addr = next((a.split("=", 1)[1] for a in dig(probe, "exec", "command") or [] if a.startswith("-addr=")), None)
            if addr is not None and listen:
                self.check(hostport(addr) == listen or (hostport(addr) or ("", 0))[1] == listen[1], where,
                           f"{name} checks {addr}, but server.listen is {dig(cfg, 'server', 'listen')}", f"{name} checks server.listen")

    def check_secrets(self, where: str, pod: dict, c: dict, cfg: dict, files: dict) -> None:
        env_vars = {f"routes.{route}.api_key_env": rc.get("api_key_env") for route, rc in (cfg.get("routes") or {}).items()}
        self.secret_sources(where, pod, c, cfg, files, env_vars, SECRET_FILES, self.stand_in_env)

    def secret_sources(self, where, pod, c, cfg, files, env_vars: dict, secret_files: dict, stand_in: dict) -> None:
        """Environment variables the config names come from Secrets; so do the files it names."""
        env = {e["name"]: e for e in c.get("env") or []}
        for key, var in env_vars.items():
            if var is None:
                continue
            ref = dig(env.get(var), "valueFrom", "secretKeyRef")
            if self.check(ref is not None, where, f"{key} = {var!r}: the container needs env {var} from a Secret (secretKeyRef)",
                          f"env {var} comes from Secret {ref and ref['name']}"):
                self.secret_has_key(where, ref["name"], ref["key"], f"env {var}")
                stand_in[var] = "stand-in-api-key"
        for keys, override in secret_files.items():
            path = dig(cfg, *keys)
            if path is None:
                continue
            src = files.get(path)
            if self.check(src is not None and src[0] == "secret", where, f"{'.'.join(keys)} {path} is not a file of a Secret mounted in {c['name']}",
                          f"{path} comes from Secret {src and src[1]}"):
                self.secret_has_key(where, src[1], src[2], path)
                self.readable(where, pod, path, src[3])
                stand_in[override] = ""  # filled in by write_config

    def config_map_file(self, where: str, pod: dict, c: dict) -> tuple[str, dict] | None:
        """The text of the --config file, when it is a mounted ConfigMap file."""
        args = c.get("args") or []
        files = self.mounted_files(c, pod)
        config_path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
        src = files.get(config_path)
        if not self.check(src is not None and src[0] == "configMap", where,
                          f"--config {config_path} is not a file of a ConfigMap mounted in the {c['name']} container",
                          f"--config {config_path} is ConfigMap {src and src[1]}"):
            return None
        self.readable(where, pod, config_path, src[3])
        return self.by_name[("ConfigMap", src[1])]["data"][src[2]], files

    def check_judge(self, doc: dict, c: dict) -> None:
        pod = doc["spec"]["template"]["spec"]
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        found = self.config_map_file(where, pod, c)
        if found is None:
            return
        self.judge_text, files = found
        cfg = self.judge = tomllib.loads(self.judge_text)
        self.check_grace(where, pod, cfg, "20s", JUDGE_FLUSH_MARGIN_S, "to flush and commit")
        admin = hostport(dig(cfg, "server", "admin_listen") or "127.0.0.1:9465")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        self.check(admin[1] in ports.values() and not loopback(admin[0]), where,
                   f"server.admin_listen {admin} must be a containerPort bound beyond loopback (probes and Prometheus reach the pod IP)",
                   f"admin_listen port {admin[1]} is reachable")
        scrape = (dig(doc, "spec", "template", "metadata", "annotations") or {}).get("prometheus.io/port")
        self.check(scrape in (None, str(admin[1])), where, f"prometheus.io/port {scrape} != admin_listen port {admin[1]}",
                   "scrape annotation matches admin_listen")
        for name, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
            get = dig(c, name, "httpGet") or {}
            port = ports.get(get.get("port"), get.get("port"))
            self.check(port == admin[1] and get.get("path") == path, where,
                       f"{name} must be httpGet {path} on the admin port {admin[1]} (found {get or 'none'})", f"{name} is {path} on the admin port")
        env_vars = {"judge.pairwise.api_key_env": dig(cfg, "judge", "pairwise", "api_key_env")}
        self.secret_sources(where, pod, c, cfg, files, env_vars, JUDGE_SECRET_FILES, self.judge_env)
        kafka = cfg.get("kafka") or {}
        pairs, grades = kafka.get("pairs_topic", "untaken.pairs"), kafka.get("grades_topic", "untaken.grades")
        written = dig(self.config, "sink", "kafka", "topic")
        if written is not None:
            self.check(pairs == written, where, f"kafka.pairs_topic {pairs!r} is not the topic the sidecar writes ({written!r})",
                       "reads the sidecar's pairs topic")
        pairs_topic = self.topic(pairs)
        if pairs_topic is not None:
            replicas, partitions = doc["spec"].get("replicas", 1), pairs_topic["spec"].get("partitions", 1)
            self.check(replicas <= partitions, where,
                       f"replicas {replicas} > {partitions} partitions of {pairs!r}: the extra judge replicas get no partition and idle",
                       f"replicas {replicas} <= {partitions} partitions")
        grades_topic = self.topic(grades)
        if self.check(grades_topic is not None, where, f"no KafkaTopic for kafka.grades_topic {grades!r}", "grades topic exists"):
            self.same_cluster(grades_topic, kafka.get("brokers", ""))

    def topic(self, name: str) -> dict | None:
        return next((d for d in self.docs if d["kind"] == "KafkaTopic" and (dig(d, "spec", "topicName") or d["metadata"]["name"]) == name), None)

    def same_cluster(self, t: dict, brokers: str) -> None:
        host = (hostport(brokers.split(",")[0]) or ("", 0))[0]
        m = re.match(r"^([a-z0-9-]+)-kafka-bootstrap\.([a-z0-9-]+)(\.|$)", host)
        if m:  # Strimzi: <cluster>-kafka-bootstrap.<namespace>; its Topic Operator watches that namespace
            cluster, ns = dig(t, "metadata", "labels", "strimzi.io/cluster"), t["metadata"].get("namespace")
            self.check((cluster, ns) == (m[1], m[2]), f"KafkaTopic/{t['metadata']['name']}",
                       f"strimzi.io/cluster={cluster!r} in namespace {ns!r}, but the brokers are cluster {m[1]!r} in {m[2]!r}",
                       "topic sits with the brokers' Strimzi cluster")

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

    def check_topic(self) -> None:
        kafka = dig(self.config, "sink", "kafka") or {}
        if not kafka.get("topic"):
            return
        topics = [d for d in self.docs if d["kind"] == "KafkaTopic"
                  and (dig(d, "spec", "topicName") or d["metadata"]["name"]) == kafka["topic"]]
        if not self.check(bool(topics), "KafkaTopic", f"no KafkaTopic for sink.kafka.topic {kafka['topic']!r}", "topic exists"):
            return
        t, where = topics[0], f"KafkaTopic/{topics[0]['metadata']['name']}"
        spec, conf = t["spec"], t["spec"].get("config") or {}
        self.check(conf.get("min.insync.replicas", 1) < spec.get("replicas", 2), where,
                   "min.insync.replicas must be below replicas, or one broker down blocks acks=all", "min ISR < replicas")
        body = dig(self.config, "server", "max_body_bytes") or 0
        self.check(conf.get("max.message.bytes", 1048588) > body, where,
                   f"max.message.bytes must exceed server.max_body_bytes {body} (a pair holds a request and two answers)", "message size fits")
        self.same_cluster(t, kafka.get("brokers", ""))

    def write_config(self, out: Path) -> None:
        """untaken.toml as rendered, and stand-ins for the Secrets it names."""
        (out / f"{self.name}.toml").write_text(self.config_text)
        stand_in = out / f"{self.name}.secret"
        stand_in.write_text("stand-in-secret\n")
        env = {k: v or str(stand_in) for k, v in self.stand_in_env.items()}
        (out / f"{self.name}.env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))
        if self.judge is not None:
            (out / f"{self.name}-judge.toml").write_text(self.judge_text)
            env = {k: v or str(stand_in) for k, v in self.judge_env.items()}
            (out / f"{self.name}-judge.env").write_text("".join(f"{k}={v}\n" for k, v in sorted(env.items())))

    def run(self) -> None:
        workloads = [d for d in self.docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]
        judges = []
        for w in workloads:
            judge = [c for c in w["spec"]["template"]["spec"].get("containers") or [] if (c.get("args") or [""])[0] == "judge"]
            if judge:
                judges.append((w, judge[0]))
            else:
                self.check_workload(w)
        if self.check(self.config is not None, "manifests", "no workload runs the untaken sidecar", "untaken found"):
            self.check_topic()
        # After the sidecar: the judge is checked against the topic it writes.
        for w, c in judges:
            self.check_judge(w, c)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs-out", type=Path, help="write NAME.toml and NAME.env for untaken check-config")
    ap.add_argument("--verbose", action="store_true", help="print passing checks too")
    ap.add_argument("renders", nargs="+", metavar="NAME=FILE")
    a = ap.parse_args()
    errors = 0
    for spec in a.renders:
        name, _, file = spec.partition("=")
        r = Render(name, Path(file))
        r.run()
        for line in r.errors + [n for n in r.notes if a.verbose or n.startswith("note")]:
            print(line)
        errors += len(r.errors)
        if a.configs_out and r.config is not None:
            r.write_config(a.configs_out)
    if errors:
        print(f"check_manifests: FAILED with {errors} error(s)")
        return 1
    print(f"check_manifests: OK ({len(a.renders)} renderings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
