"""Turns side-by-side.sh's raw results into docs/PERFORMANCE.md (medians and ratios)."""
import datetime
import json
import os
import platform
import statistics

E = os.environ
rows = []
with open(E["RESULTS"]) as f:
    for line in f:
        sc, broker, rnd, load, cpu, js = line.rstrip("\n").split("\t", 5)
        try:
            d = json.loads(js)
        except ValueError:
            d = {}
        d["_load"] = float(load)
        d["_broker_ticks"] = int(cpu) if cpu else None
        rows.append((sc, broker, int(rnd), d))
mem = []
with open(E["MEMORY"]) as f:
    for line in f:
        b, r, base, idle, before, full = (line.rstrip("\n").split("\t") + [""] * 6)[:6]
        mem.append((b, int(r), base, idle, before, full))
notes = [l.strip() for l in open(E["NOTES"]) if l.strip()]
restarts = []
if E.get("RESTART") and os.path.exists(E["RESTART"]):
    with open(E["RESTART"]) as f:
        for line in f:
            parts = (line.rstrip("\n").split("\t") + [""] * 8)[:8]
            try:
                fill = json.loads(parts[7]) if parts[7] else {}
            except ValueError:
                fill = {}
            restarts.append(dict(broker=parts[0], queues=parts[1], bindings=parts[2], fill_s=parts[3],
                                 stop_s=parts[4], restart_s=parts[5], rss=parts[6], fill=fill))


def cpuinfo():
    model = "unknown"
    for l in open("/proc/cpuinfo"):
        if l.startswith("model name"):
            model = l.split(":", 1)[1].strip()
            break
    ram = 0
    for l in open("/proc/meminfo"):
        if l.startswith("MemTotal"):
            ram = int(l.split()[1]) / 1024 / 1024
    return model, os.cpu_count(), ram


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def runs(sc, broker):
    return [d for s, b, _, d in rows if s == sc and b == broker and d.get("mode")]


def get(d, key):
    """key(d), or None when the run's JSON lacks a field (another mode, an older warren-perf)."""
    try:
        return key(d)
    except (KeyError, TypeError, IndexError):
        return None


def metric(sc, broker, key):
    return med([get(d, key) for d in runs(sc, broker)])


def fmt(v, unit=""):
    if v is None:
        return "n/a"
    if abs(v) >= 100:
        s = f"{v:,.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def ratio(w, r):
    if w is None or r is None or r == 0:
        return "n/a"
    return f"{w / r:.2f}x"


def broker_us_per_msg(d):
    t = d.get("_broker_ticks")
    n = d.get("sent", 0) + d.get("received_total", 0)
    if d.get("mode") == "topology":  # per metadata operation
        n = d.get("declared", 0) + d.get("bound", 0) + d.get("deleted", 0)
    if t is None or n == 0:
        return None
    return t * 10_000 / n  # ticks are 10 ms


SC = [
    # scenario, description, metric name, key, unit, better
    ("autoack", "1 producer, 1 consumer, 16 B (24 B body), auto-ack", "received msg/s",
     lambda d: d["receive_rate"], "", "higher"),
    ("ack", "1 producer, 1 consumer, 16 B, manual ack every 100, prefetch 1000", "received msg/s",
     lambda d: d["receive_rate"], "", "higher"),
    ("publish_only", "1 producer, no consumer, 16 B", "published msg/s",
     lambda d: d["send_rate"], "", "higher"),
    ("persistent_confirms", "1 KiB persistent to a durable queue, confirms (max 1000 outstanding), 1 consumer ack/100 prefetch 1000",
     "confirmed msg/s", lambda d: d["confirm_rate"], "", "higher"),
    ("fanout10", "fanout exchange to 10 queues, 10 consumers, 16 B, auto-ack", "received msg/s (all queues)",
     lambda d: d["receive_rate"], "", "higher"),
    ("topic1000", "topic exchange, 1,000 bindings, keys rotate over all of them, 16 B, auto-ack", "received msg/s",
     lambda d: d["receive_rate"], "", "higher"),
    ("large1mib", "1 MiB messages, 1 producer, 1 consumer, auto-ack", "received MB/s",
     lambda d: d["receive_mb_s"], "", "higher"),
    ("large1mib", "", "published MB/s", lambda d: d["send_mb_s"], "", "higher"),
    ("rtt", "request-reply, one message in flight, 16 B", "round trip p50 us",
     lambda d: d["latency"]["p50_us"], "", "lower"),
    ("rtt", "", "round trip p99 us", lambda d: d["latency"]["p99_us"], "", "lower"),
    ("fixed10k", "fixed 10,000 msg/s, 1 producer, 1 consumer, 16 B, auto-ack", "consumer latency p99 us",
     lambda d: d["latency"]["p99_us"], "", "lower"),
    ("fixed10k", "", "consumer latency p50 us", lambda d: d["latency"]["p50_us"], "", "lower"),
    ("drain16", "1,000,000 16 B transient messages published first (no consumer), then drained by one auto-ack consumer, prefetch 1000",
     "drained msg/s", lambda d: d["drain_rate"], "", "higher"),
    ("drain1k_ack", "200,000 1 KiB transient messages published first, then drained by one consumer, ack every 100, prefetch 1000",
     "drained msg/s", lambda d: d["drain_rate"], "", "higher"),
]
TOPOLOGY = {
    "topology1": "10,000 durable queues, each declared and then bound to amq.direct (its name as key), one operation "
                 "at a time (each waits for its -ok), 1 client; then deleted one at a time",
    "topology16": "the same from 16 client connections at once (625 queues each, one operation at a time per "
                  "connection); then deleted the same way",
}
for sc, desc in TOPOLOGY.items():
    SC += [
        (sc, desc, "declare+bind pairs/s", lambda d: d["declare_rate"], "", "higher"),
        (sc, "", "delete ops/s", lambda d: d["delete_rate"], "", "higher"),
        (sc, "", "last/first quarter of the declares (1 = linear)", lambda d: d["last_to_first_quarter"], "", "lower"),
    ]

# Only the scenarios that were run (SCENARIOS may name a few).
ran = {r[0] for r in rows}
SC = [x for x in SC if x[0] in ran]

model, cores, ram = cpuinfo()
loads = [d["_load"] for _, _, _, d in rows]
out = []
w = out.append
w("# Warren vs RabbitMQ: side-by-side performance\n")
w("Generated by `crates/warren-perf/side-by-side.sh` (load generator: `warren-perf`, this repo). "
  "Do not edit by hand; rerun the script.\n")
w("## Conditions\n")
date = E.get("REPORT_DATE") or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
w(f"- Date: {date}")
w(f"- Machine: {model}, {cores} cores, {ram:.1f} GiB RAM, Linux {platform.release()}")
w(f"- Warren: `{E.get('WARREN_VERSION', '?')}` at commit `{E.get('GIT_REV', '?')}` (release build, "
  "`--data-dir` on a temp dir, default config)")
w(f"- RabbitMQ: {E.get('RABBIT_VERSION', '?')} (Debian package), Erlang/OTP {E.get('ERLANG_VERSION', '?')}, "
  "its own node, no plugins enabled (no management), default configuration")
w(f"- Each scenario: {E.get('DURATION')} s per run, {E.get('ROUNDS')} rounds, alternating Warren and "
  "RabbitMQ; the figures are medians over the rounds. Broker, load generator and everything else share the "
  "same machine and loopback.")
if loads:
    w(f"- Load average (1 min) at the start of each run: min {min(loads):.2f}, median "
      f"{statistics.median(loads):.2f}, max {max(loads):.2f} on {cores} cores. The benchmark itself "
      "(broker + load generator) accounts for about 2; the machine is shared with other developers' "
      "builds, so absolute numbers are noisy; the ratios are the more useful figure.")
w("- The topology scenarios are not time-bounded: each round declares, binds and deletes all its queues.")
w("- Bodies carry a 24-byte stamp (sequence, producer id, send time), so the \"16 B\" scenarios send "
  "24-byte bodies (warren-perf's minimum).")
w("- Rates are over the publishing period; latency is consumer latency from the send time in the body "
  "(so a queue that grows because the producer outpaces the consumer shows up as latency).")
w("")
w("## Results (medians)\n")
w("| scenario | metric | Warren | RabbitMQ | Warren/RabbitMQ | better |")
w("|---|---|---:|---:|---:|---|")
for sc, desc, name, key, unit, better in SC:
    wv = metric(sc, "warren", key)
    rv = metric(sc, "rabbitmq", key)
    label = sc if desc else ""
    w(f"| {label} | {name} | {fmt(wv, unit)} | {fmt(rv, unit)} | {ratio(wv, rv)} | {better} |")
if mem:
    for what, idx in (("1,000 idle connections (1 channel each)", 3), ("1,000,000 16 B transient messages in one queue", 5)):
        wv = med([float(m[idx]) / 1024 for m in mem if m[0] == "warren" and m[idx]])
        rv = med([float(m[idx]) / 1024 for m in mem if m[0] == "rabbitmq" and m[idx]])
        w(f"| memory | RSS MiB with {what} | {fmt(wv)} | {fmt(rv)} | {ratio(wv, rv)} | lower |")
w("")
w("Scenario definitions:\n")
for sc, desc, *_ in SC:
    if desc:
        w(f"- `{sc}`: {desc}")
if mem:
    w("- `memory`: broker restarted, RSS (VmRSS of the broker process; beam.smp for RabbitMQ) at rest, "
      "with 1,000 idle connections each with one open channel, and after publishing 1,000,000 16-byte "
      "(24 B body) transient messages with confirms into one queue that nobody consumes.")
w("")
if any(sc not in TOPOLOGY for sc, *_ in SC):
    w("## Details (medians)\n")
    w("| scenario | broker | sent msg/s | received msg/s | MB/s recv | latency p50 / p99 / max us | drain s | dup / out-of-order / missing | client CPU us/msg | broker CPU us/msg |")
    w("|---|---|---:|---:|---:|---|---:|---|---:|---:|")
    seen = []
    for sc, *_ in SC:
        if sc in seen or sc in TOPOLOGY:
            continue
        seen.append(sc)
        for broker in ("warren", "rabbitmq"):
            rs = runs(sc, broker)
            if not rs:
                w(f"| {sc} | {broker} | failed or not run | | | | | | | |")
                continue
            m = lambda k: med([get(d, k) for d in rs])
            lat = f"{fmt(m(lambda d: d['latency']['p50_us']))} / {fmt(m(lambda d: d['latency']['p99_us']))} / {fmt(m(lambda d: d['latency']['max_us']))}"
            ver = "{} / {} / {}".format(sum(d.get("duplicates", 0) for d in rs), sum(d.get("out_of_order", 0) for d in rs),
                                        sum(d.get("missing", 0) for d in rs))
            w(f"| {sc} | {broker} | {fmt(m(lambda d: d['send_rate']))} | {fmt(m(lambda d: d['receive_rate']))} | "
              f"{fmt(m(lambda d: d['receive_mb_s']))} | {lat} | {fmt(max(d.get('drain_s', 0) for d in rs))} | {ver} | {fmt(m(lambda d: d['client_cpu_us_per_msg']))} | "
              f"{fmt(m(broker_us_per_msg))} |")
    w("")
    w("Received msg/s counts what arrived during the publishing period; what arrives after it (the "
      "drain, shown as the longest over the rounds) counts for verification only. Missing = sent but not "
      f"received when the drain stopped ({E.get('DRAIN', '?')} s without progress). ")
    w("Verification columns are totals over all rounds. CPU per message = (user+system CPU time of the "
      "process during the run) / (messages sent + messages received); the broker's is read from "
      "/proc/<pid>/stat before and after each run, warren-perf's from its own /proc/self/stat. In the "
      "rtt scenario \"client\" includes the responder.")
    w("")
topo_rows = [(sc, b) for sc in TOPOLOGY for b in ("warren", "rabbitmq") if any(s == sc and x == b for s, x, _, _ in rows)]
if topo_rows:
    w("## Topology details (medians)\n")
    w("| scenario | broker | queues / bindings / deleted | declare phase s | pairs/s | ops/s | quarters s (first .. last) | "
      "first / last window s | declare latency p50 / p99 / max us | delete s | delete/s | delete p50 / p99 us | broker CPU s |")
    w("|---|---|---|---:|---:|---:|---|---|---|---:|---:|---|---:|")
    for sc, broker in topo_rows:
        rs = runs(sc, broker)
        if not rs:
            w(f"| {sc} | {broker} | failed or not run | | | | | | | | | | |")
            continue
        m = lambda k: med([get(d, k) for d in rs])
        counts = f"{fmt(m(lambda d: d['declared']))} / {fmt(m(lambda d: d['bound']))} / {fmt(m(lambda d: d['deleted']))}"
        quarters = " / ".join(fmt(m(lambda d, i=i: d["declare_quarters_s"][i])) for i in range(4))
        window = m(lambda d: d["window"])
        windows = f"{fmt(m(lambda d: d['first_window_s']))} / {fmt(m(lambda d: d['last_window_s']))} ({fmt(window)} each)"
        lat = " / ".join(fmt(m(lambda d, k=k: d["latency"][k])) for k in ("p50_us", "p99_us", "max_us"))
        dlat = " / ".join(fmt(m(lambda d, k=k: d["delete_latency"][k])) for k in ("p50_us", "p99_us"))
        bcpu = m(lambda d: d["_broker_ticks"] / 100)
        w(f"| {sc} | {broker} | {counts} | {fmt(m(lambda d: d['declare_s']))} | {fmt(m(lambda d: d['declare_rate']))} | "
          f"{fmt(m(lambda d: d['declare_ops_rate']))} | {quarters} | {windows} | {lat} | {fmt(m(lambda d: d['delete_s']))} | "
          f"{fmt(m(lambda d: d['delete_rate']))} | {dlat} | {fmt(bcpu)} |")
    w("")
    w("Quarters: wall time for each successive 25% of the declare(+bind) pairs to complete (by completion order "
      "over all clients); equal quarters mean the cost per declare does not grow with the number of queues. "
      "Windows: the first and the last 1,000 pairs. Ops/s counts declares and binds separately.")
    w("")
if restarts:
    w("## Restart with a large durable topology\n")
    w("| broker | queues | bindings | fill s (declare + bind, one at a time per client) | stop s | start until a passive declare of the last queue succeeds, s | RSS KiB after |")
    w("|---|---:|---:|---:|---:|---:|---:|")
    for r in restarts:
        w(f"| {r['broker']} | {r['queues']} | {r['bindings']} | {r['fill_s']} | {r['stop_s']} | {r['restart_s']} | {r['rss'] or 'n/a'} |")
    w("")
    w("Warren is killed with `kill -9` (stop 0 s) and started again on the same `--data-dir`; RabbitMQ is stopped "
      "with `rabbitmqctl stop` and its node started again on the same data. The probe (`warren-perf topology "
      "--await-queue`) retries the connection and passive declare every 20 ms from the moment the start command "
      "is issued.")
    w("")
if mem:
    w("## Memory (KiB, VmRSS)\n")
    w("| broker | round | at rest | 1,000 idle connections | before fill | 1M messages queued |")
    w("|---|---:|---:|---:|---:|---:|")
    for b, r, base, idle, before, full in mem:
        w(f"| {b} | {r} | {base or 'n/a'} | {idle or 'n/a'} | {before or 'n/a'} | {full or 'n/a'} |")
    w("")
obs = []
for sc in dict.fromkeys(r[0] for r in rows):
    for broker in ("warren", "rabbitmq"):
        rs = [d for d in runs(sc, broker) if d.get("mode") == "run"]
        miss = sum(d.get("missing", 0) for d in rs)
        bad = [d for d in rs if d.get("consumers", 0) > 0
               and d.get("received", 0) < 0.5 * d.get("sent", 0) * (10 if sc == "fanout10" else 1)]
        if miss:
            obs.append(f"`{sc}` on {broker}: {miss:,} messages (over {len(rs)} rounds) had not arrived when the "
                       f"drain gave up ({E.get('DRAIN', '?')} s without a delivery after the producer stopped); "
                       "the queues are deleted afterwards, so whether they were stuck or lost is not shown here.")
        if bad:
            obs.append(f"`{sc}` on {broker}: in {len(bad)} of {len(rs)} rounds consumers received less than half "
                       "of what was published during the run (a backlog built up in the broker).")
for sc in TOPOLOGY:
    for broker in ("warren", "rabbitmq"):
        q = metric(sc, broker, lambda d: d["last_to_first_quarter"])
        if q is not None and q >= 1.5:
            obs.append(f"`{sc}` on {broker}: the last quarter of the declares took {q:.1f}x as long as the first "
                       "(the cost of a durable declare grows with the number of queues already there).")
if obs:
    w("## Observations (computed from the raw results)\n")
    for o in obs:
        w(f"- {o}")
    w("")
failed = [(s, b, r) for s, b, r, d in rows if not d.get("mode")]
if failed or notes:
    w("## What did not run\n")
    for s, b, r in failed:
        w(f"- `{s}` on {b}, round {r}: warren-perf failed (no result; see perf-errors.log of the run)")
    for n in notes:
        w(f"- {n}")
    w("")
# Hand-written sections (micro-benchmarks, profile, other measurements) live beside this
# script and are appended unchanged, so that rerunning the benchmark keeps them.
import os
extra = os.path.join(os.path.dirname(os.path.abspath(__file__)), "performance-notes.md")
if os.path.exists(extra):
    w(open(extra).read())
open(E["OUT_DOC"], "w").write("\n".join(out))
