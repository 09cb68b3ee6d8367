#!/usr/bin/env python3
"""The figures of benches/run.sh, computed from ghz's JSON output (`-O json`).

    run_report.py summary GHZ_JSON            one line: rps count p50_ms p99_ms avg_ms errors
    run_report.py median WORK FIELD PREFIX    median over rounds of rps|p99 of runs PREFIX1, PREFIX2...
    run_report.py meta                        WORK/meta.json's text, from run.sh's M_* environment variables
    run_report.py report WORK                 the Markdown report, from WORK/meta.json, WORK/runs.tsv,
                                              WORK/ghz-TAG.json, WORK/metrics-TAG.txt, WORK/rss-TAG.txt

runs.tsv has one line per measured run, written by run.sh's `measure`:
tag, server CPU s, ghz CPU s, broker+upstream CPU s, other CPU s, steal s, peak RSS KiB, host busy %.
"""
import json
import os
import re
import statistics
import sys
from pathlib import Path


def ghz(path):
    g = json.loads(Path(path).read_text())
    pct = {d["percentage"]: d["latency"] / 1e6 for d in g.get("latencyDistribution") or []}
    errors = sum((g.get("errorDistribution") or {}).values())
    return {"rps": g["rps"], "count": g["count"], "p50": pct.get(50, 0.0), "p99": pct.get(99, 0.0),
            "avg": g["average"] / 1e6, "errors": errors}


def runs(work):
    out = {}
    for line in (work / "runs.tsv").read_text().splitlines():
        tag, cpu, ghz_cpu, aux, other, steal, hwm, busy = line.split("\t")
        r = ghz(work / f"ghz-{tag}.json")
        r.update(cpu=float(cpu), ghz_cpu=float(ghz_cpu), aux=float(aux), other=float(other),
                 steal=float(steal), hwm_mib=int(hwm) / 1024, busy=float(busy))
        r["us_call"] = r["cpu"] * 1e6 / r["count"] if r["count"] else 0.0
        out[tag] = r
    return out


def metric(work, tag, name, label_re=""):
    """Sum of a metric family in a /metrics snapshot, optionally filtered by a regex on the labels."""
    path = work / f"metrics-{tag}.txt"
    if not path.exists():
        return 0
    total = 0.0
    for line in path.read_text().splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
        if m and m.group(1) == name and re.search(label_re, m.group(2) or ""):
            total += float(m.group(3))
    return int(total)


def shed_reasons(work, tag):
    path = work / f"metrics-{tag}.txt"
    if not path.exists():
        return ""
    found = re.findall(r'^untaken_mirror_requests_total\{decision="shed",reason="([^"]*)"[^}]*\} (\S+)$',
                       path.read_text(), re.M)
    return " ".join(f"{r}={int(float(n))}" for r, n in found)


def ratio(a, b):
    return a / b if b else float("nan")


def verdict(value, op, limit):
    ok = {">=": value >= limit, "<=": value <= limit, "<": value < limit}[op]
    return "PASS" if ok else "**MISS**"


def report(work):
    meta = json.loads((work / "meta.json").read_text())
    r = runs(work)
    rounds = int(meta["rounds"])
    base_rps = meta["base_rps"]
    pair_rps = meta.get("pair_rps", 0)
    allocs = meta["allocators"]  # e.g. [["", "glibc"], ["m", "mimalloc"]]: tag suffix, name
    out = []
    p = out.append
    p(f"# untaken benchmark {meta['stamp']}")
    p("")
    p(f"- machine: {meta['machine']}")
    p(f"- source measured: {meta['source']}, built at the start of the run")
    p(f"- allocators: " + ", ".join(f"{name} ({meta['builds'][name]})" for _, name in allocs))
    if meta.get("what_if"):
        p(f"- WHAT-IF run, not the defaults: {meta['what_if']}")
    p(f"- settings: {meta['settings']}")
    p("")

    def name_of(tag):
        if tag == "c100":
            return f"(c100) untaken 100 %, Kafka up, {allocs[0][1]}, -r {base_rps} [reference]"
        m = re.match(r"^([bcfs])([a-z]?)(\d+)$", tag)
        if m:
            alloc = dict(allocs).get(m.group(2), "?")
            what = {"b": "untaken 0 %", "c": "untaken 10 %, Kafka up",
                    "f": f"untaken 0 %, -r {pair_rps}", "s": f"untaken 100 %, Kafka up, -r {pair_rps}"}[m.group(1)]
            return f"({m.group(1)}) {what}, {alloc}, round {m.group(3)}"
        if tag.startswith("a"):
            return f"(a) no-op tonic server, round {tag[1:]}"
        return {"d": f"(d) untaken 100 %, upstream hangs, Kafka down, {allocs[0][1]}, -r {base_rps}",
                "e": f"(e) [extra] untaken 10 %, fast upstream, Kafka down, {allocs[0][1]}, -r {base_rps}"}.get(tag, tag)

    p("| run | rps | p50 ms | p99 ms | avg ms | calls | errors | server CPU s | server µs/call | ghz CPU s "
      "| broker+upstream CPU s | other CPU s | steal s | peak RSS MiB | host busy |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for tag, x in r.items():
        p(f"| {name_of(tag)} | {x['rps']:.0f} | {x['p50']:.2f} | {x['p99']:.2f} | {x['avg']:.2f} | {x['count']} "
          f"| {x['errors']} | {x['cpu']:.2f} | {x['us_call']:.1f} | {x['ghz_cpu']:.2f} | {x['aux']:.2f} "
          f"| {x['other']:.2f} | {x['steal']:.2f} | {x['hwm_mib']:.1f} | {x['busy']:.0f}% |")
    p("")

    def per_round(field, num, den):
        return [ratio(r[f"{num}{i}"][field], r[f"{den}{i}"][field]) for i in range(1, rounds + 1)]

    def med(field, prefix):
        return statistics.median(r[f"{prefix}{i}"][field] for i in range(1, rounds + 1))

    def fmt(vals):
        return " / ".join(f"{v:.2f}" for v in vals)

    p("Medians over the rounds: " + "; ".join(
        f"({s}{suffix}) {med('rps', s + suffix):.0f} rps, p99 {med('p99', s + suffix):.2f} ms, "
        f"{med('us_call', s + suffix):.1f} µs server CPU a call"
        for s, suffix in [("a", "")] + [(s, m) for m, _ in allocs for s in ("bcfs" if pair_rps else "bc")]) + ".")
    p("")
    p("| target | allocator | per round | median | limit | verdict |")
    p("|---|---|---|---|---|---|")
    for suffix, alloc in allocs:
        b, c = "b" + suffix, "c" + suffix
        rows = [("(b) 0 % throughput vs (a)", per_round("rps", b, "a"), ">=", 0.80),
                ("(b) 0 % p99 vs (a)", per_round("p99", b, "a"), "<=", 1.25),
                ("(c) 10 % throughput vs (a)", per_round("rps", c, "a"), ">=", 0.85),
                ("(c) 10 % p99 vs (a)", per_round("p99", c, "a"), "<=", 1.25)]
        for what, vals, op, limit in rows:
            m = statistics.median(vals)
            p(f"| {what} | {alloc} | {fmt(vals)} | {m:.2f}x | {op} {limit:.2f}x | {verdict(m, op, limit)} |")
        # untaken's own CPU per sampled pair, as issue 9 defines it: the server's CPU per
        # call at 100 % minus at 0 %, both at the same offered rate, each round.
        if pair_rps:
            f, s = "f" + suffix, "s" + suffix
            pair = [r[f"{s}{i}"]["us_call"] - r[f"{f}{i}"]["us_call"] for i in range(1, rounds + 1)]
            m = statistics.median(pair)
            p(f"| untaken's CPU per sampled pair, (s) 100 % − (f) 0 % at {pair_rps} rps | {alloc} "
              f"| {' / '.join(f'{v:.0f}' for v in pair)} µs | {m:.0f} µs | <= 60 µs | {verdict(m, '<=', 60)} |")
        # The same cost read from the closed-loop runs: (c) − (b) per call, over the sampling
        # rate. A cross-check, not the target: (c) serves fewer calls a second than (b), so
        # its workers park (and are woken) more often per call, and that is charged to pairs.
        pair = [(r[f"{c}{i}"]["us_call"] - r[f"{b}{i}"]["us_call"]) / meta["c_rate"] for i in range(1, rounds + 1)]
        m = statistics.median(pair)
        p(f"| [cross-check] CPU per sampled pair from the closed loop, ((c) − (b)) / {meta['c_rate']} | {alloc} "
          f"| {' / '.join(f'{v:.0f}' for v in pair)} µs | {m:.0f} µs | - | - |")
    c_p99 = med("p99", "c")
    if "d" in r:
        m = ratio(r["d"]["p99"], c_p99)
        p(f"| (d) hanging + Kafka down: p99 vs (c) median | {allocs[0][1]} | - | {m:.2f}x | <= 1.25x | {verdict(m, '<=', 1.25)} |")
        p(f"| (d) peak RSS (VmHWM) | {allocs[0][1]} | - | {r['d']['hwm_mib']:.1f} MiB | < 128 MiB | {verdict(r['d']['hwm_mib'], '<', 128)} |")
    k = meta.get("kafka")
    if k:
        best = max(k["kcat_plain"], k["kcat_lz4"])
        m = ratio(k["sink_capped"], best)
        p(f"| Kafka sink ({k['sink_conc']} in flight, as the publisher) vs kcat (the faster setting) | - | - | {m:.2f}x | >= 0.50x | {verdict(m, '>=', 0.5)} |")
    if "e" in r:
        p(f"| (e) [extra] Kafka outage at 10 %: peak RSS | {allocs[0][1]} | - | {r['e']['hwm_mib']:.1f} MiB | < 128 MiB | {verdict(r['e']['hwm_mib'], '<', 128)} |")
        m = ratio(r["e"]["p99"], c_p99)
        p(f"| (e) [extra] Kafka outage at 10 %: p99 vs (c) median | {allocs[0][1]} | - | {m:.2f}x | <= 1.25x | {verdict(m, '<=', 1.25)} |")
    p("")
    if "d" in r and "c100" in r:
        p(f"(d) also vs (c100), its healthy twin at the same offered rate: p99 {ratio(r['d']['p99'], r['c100']['p99']):.2f}x; "
          f"(d) sustained {r['d']['rps']:.0f} of {base_rps} rps offered, (c100) {r['c100']['rps']:.0f}.")
        p("")
    if k:
        p(f"Kafka: {k['records']} records of {k['record_bytes']} B (key:payload line), acks=all, enable.idempotence=true, "
          f"topic of {meta['partitions']} partitions, {k['repeats']} repeats each, fresh topic each:")
        p("")
        p("| producer | records/s, median | each repeat |")
        p("|---|---|---|")
        p(f"| {k['kcat_version']}, no compression | {k['kcat_plain']:.0f} | {k['kcat_plain_all']} |")
        p(f"| kcat, -X compression.type=lz4 | {k['kcat_lz4']:.0f} | {k['kcat_lz4_all']} |")
        p(f"| untaken KafkaSink::send ({k['rdkafka']}), {k['sink_conc']} in flight (sidecar/publisher.rs MAX_IN_FLIGHT) | {k['sink_capped']:.0f} | {k['sink_capped_all']} |")
        p(f"| untaken KafkaSink::send, all {k['records']} in flight [diagnostic] | {k['sink_unbounded']:.0f} | {k['sink_unbounded_all']} |")
        p("")
    p("What untaken did (its /metrics at the end of each run, warm-up included):")
    p("")
    p("| run | sampled | not sampled | shed | published | spooled | dropped | pending at end |")
    p("|---|---|---|---|---|---|---|---|")
    mirror = "untaken_mirror_requests_total"
    for tag in r:
        if tag.startswith("a"):
            continue
        sampled, not_sampled, shed = (metric(work, tag, mirror, f'decision="{d}"') for d in ("sampled", "not_sampled", "shed"))
        p(f"| {tag} | {sampled} | {not_sampled} "
          f"| {shed} | {metric(work, tag, 'untaken_pairs_published_total')} "
          f"| {metric(work, tag, 'untaken_pairs_spooled_total')} | {metric(work, tag, 'untaken_pairs_dropped_total')} "
          f"| {metric(work, tag, 'untaken_pending_pairs')} |")
    p("")
    sheds = [f"{tag}: {shed_reasons(work, tag)}" for tag in r if not tag.startswith("a") and shed_reasons(work, tag)]
    p("Shed reasons: " + ("; ".join(sheds) if sheds else "none"))
    p("")
    for tag in ("d", "e"):
        rss = work / f"rss-{tag}.txt"
        if not rss.exists():
            continue
        extra = meta.get("soak", {}).get(tag, {})
        p(f"({tag}) at the end: {extra.get('threads', '?')} threads, {extra.get('fds', '?')} open fds, "
          f"{metric(work, tag, 'untaken_shadow_inflight')} shadow calls in flight, {metric(work, tag, 'untaken_pending_pairs')} pairs pending, "
          f"{metric(work, tag, 'untaken_pairs_spooled_total')} spooled, {metric(work, tag, 'untaken_pairs_dropped_total')} dropped.")
        p("")
        samples = [line.split() for line in rss.read_text().splitlines() if len(line.split()) == 4]
        t0 = int(samples[0][0]) if samples else 0
        p(f"({tag}) every 2 s from start, s:RSS MiB/pending/spooled: " + " ".join(
            f"{int(t) - t0}:{int(kib) / 1024:.0f}/{pend}/{spool}" for t, kib, pend, spool in samples if int(kib) > 0))
        p("")
    return "\n".join(out)


def meta_from_env():
    e = os.environ
    allocs = [line.split("\t") for line in e["M_ALLOCS"].splitlines()]
    num = lambda k: float(e[k])
    return {
        "stamp": e["M_STAMP"], "machine": e["M_MACHINE"], "source": e["M_SOURCE"], "settings": e["M_SETTINGS"],
        "what_if": e["M_WHAT_IF"].strip(), "rounds": int(e["M_ROUNDS"]), "base_rps": int(e["M_BASE_RPS"]),
        "c_rate": num("M_C_RATE"), "pair_rps": int(e.get("M_PAIR_RPS", "0")), "partitions": int(e["M_PARTITIONS"]),
        "allocators": [[suffix, name] for suffix, name, _ in allocs],
        "builds": {name: flags if flags.startswith("(") else f"cargo build --release {flags}" for _, name, flags in allocs},
        "soak": {"d": {"threads": e["M_THREADS_D"], "fds": e["M_FDS_D"]}, "e": {"threads": e["M_THREADS_E"], "fds": e["M_FDS_E"]}},
        "kafka": {
            "records": int(e["M_KRECORDS"]), "record_bytes": int(e["M_REC_BYTES"]), "repeats": int(e["M_KREPEATS"]),
            "sink_conc": int(e["M_SINK_CONC"]), "kcat_version": e["M_KCAT_VERSION"], "rdkafka": e["M_RDKAFKA"],
            "kcat_plain": num("M_KCAT_PLAIN"), "kcat_plain_all": e["M_KCAT_PLAIN_ALL"],
            "kcat_lz4": num("M_KCAT_LZ4"), "kcat_lz4_all": e["M_KCAT_LZ4_ALL"],
            "sink_capped": num("M_SINK_CAPPED"), "sink_capped_all": e["M_SINK_CAPPED_ALL"],
            "sink_unbounded": num("M_SINK_UNBOUNDED"), "sink_unbounded_all": e["M_SINK_UNBOUNDED_ALL"],
        },
    }


def main(argv):
    if len(argv) == 3 and argv[1] == "summary":
        x = ghz(argv[2])
        print(f"{x['rps']:.2f} {x['count']} {x['p50']:.2f} {x['p99']:.2f} {x['avg']:.2f} {x['errors']}")
    elif len(argv) == 5 and argv[1] == "median":
        work, field, prefix = Path(argv[2]), argv[3], argv[4]
        vals = [x[field] for tag, x in runs(work).items() if re.fullmatch(re.escape(prefix) + r"\d+", tag)]
        print(f"{statistics.median(vals):.2f}")
    elif len(argv) == 2 and argv[1] == "meta":
        print(json.dumps(meta_from_env(), indent=1))
    elif len(argv) == 3 and argv[1] == "report":
        print(report(Path(argv[2])))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
