"""Reads a Google Benchmark JSON file into {(name, tokens): entry}, for the report writers."""

import json


def load_benchmarks(path):
    """Returns (benchmarks keyed by (name, tokens), the run's context). Aggregates other than the mean are
    skipped; "BM_X/variant/4096/min_time:0.500/real_time_mean" becomes ("BM_X/variant", 4096)."""
    data = json.load(open(path))
    bench = {}
    for b in data["benchmarks"]:
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "mean":
            continue
        parts = [p for p in b["name"].split("/")
                 if not p.isdigit() and ":" not in p and not p.startswith("real_time") and not p.startswith("manual_time")]
        bench[("/".join(parts), int(b["tokens"]))] = b
    return bench, data["context"]
