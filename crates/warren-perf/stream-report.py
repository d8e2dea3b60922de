#!/usr/bin/env python3
"""Summarises stream-side-by-side.sh's results.tsv (step, broker, round, load, extra, json):
medians over rounds per step and broker, as a Markdown table on stdout."""

import json
import statistics
import sys


def rows(path):
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) < 6:
            continue
        step, broker, rnd, load, extra, js = parts[:6]
        try:
            j = json.loads(js) if js else {}
        except json.JSONDecodeError:
            j = {}
        kv = dict(p.split("=", 1) for p in extra.split() if "=" in p)
        yield step, broker, rnd, float(load or 0), kv, j


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(v, unit=""):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}{unit}"
    return f"{v:,.2f}{unit}"


METRICS = [
    # step, label, value(j, kv), higher is better
    ("publish16", "confirmed msg/s, 16 B (24 B body)", lambda j, kv: j.get("confirm_rate"), True),
    ("publish1024", "confirmed msg/s, 1 KiB", lambda j, kv: j.get("confirm_rate"), True),
    ("fill", "fill: confirmed msg/s, 1 KiB", lambda j, kv: j.get("confirm_rate"), True),
    ("replay", "replay from first: msg/s", lambda j, kv: j.get("receive_rate"), True),
    ("replay", "replay from first: s", lambda j, kv: j.get("duration_s"), False),
    ("replay", "replay: basic.consume to first delivery, ms",
     lambda j, kv: j.get("attach", {}).get("max_us", 0) / 1000, False),
    ("multi", "multi: aggregate msg/s", lambda j, kv: j.get("receive_rate"), True),
    ("multi", "multi: RSS growth MiB", lambda j, kv: int(kv.get("growth_kib", 0)) / 1024, False),
    ("multi", "multi: RSS before MiB", lambda j, kv: int(kv.get("rss_before_kib", 0)) / 1024, False),
    ("attach", "attach mid-stream: first delivery ms (median of tries)",
     lambda j, kv: j.get("attach", {}).get("max_us", 0) / 1000, False),
    ("restart", "restart: start to passive declare ok, s", lambda j, kv: float(kv.get("visible_s", 0)), False),
    ("restart", "restart: start to first delivery mid-stream, s",
     lambda j, kv: float(kv.get("first_delivery_s", 0)), False),
    ("restart", "restart: RSS after MiB", lambda j, kv: int(kv.get("rss_after_kib", 0) or 0) / 1024, False),
]


def main():
    data = list(rows(sys.argv[1]))
    print("| metric | Warren | RabbitMQ | Warren/RabbitMQ | runs (W/R) |")
    print("|---|---:|---:|---:|---|")
    for step, label, f, _higher in METRICS:
        vals = {}
        for b in ("warren", "rabbitmq"):
            vals[b] = [f(j, kv) for s, br, _, _, kv, j in data if s == step and br == b and j]
        w, r = med(vals["warren"]), med(vals["rabbitmq"])
        if w is None and r is None:
            continue
        ratio = f"{w / r:.2f}x" if w is not None and r else "-"
        print(f"| {label} | {fmt(w)} | {fmt(r)} | {ratio} | {len(vals['warren'])}/{len(vals['rabbitmq'])} |")
    attach = [j.get("attach", {}).get("max_us", 0) / 1000 for s, b, *_, j in data if s == "attach" and b == "warren" and j]
    if attach:
        print(f"\nWarren attach mid-stream, all tries (ms): max {max(attach):.2f}, "
              f"min {min(attach):.2f}")
    bad = [(s, b, r, j.get("missing"), j.get("duplicates"), j.get("out_of_order"))
           for s, b, r, _, _, j in data
           if j and (j.get("missing") or j.get("duplicates") or j.get("out_of_order"))]
    print("\nverification problems (step, broker, round, missing, dups, out-of-order):", bad or "none")
    failed = [(s, b, r) for s, b, r, _, _, j in data if not j]
    print("failed runs:", failed or "none")
    loads = [l for *_, l, _, _ in [(s, b, r, l, kv, j) for s, b, r, l, kv, j in data]]
    if loads:
        print(f"load average (1 min) at the start of each run: min {min(loads):.2f}, "
              f"median {statistics.median(loads):.2f}, max {max(loads):.2f}")


if __name__ == "__main__":
    main()
