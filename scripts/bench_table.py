#!/usr/bin/env python3
"""Turns benchmark JSON lines (kiln's and the PyTorch scripts') into Markdown tables, one per
benchmark, so BENCHMARKS.md is generated from measurements rather than typed.

    cargo bench --bench train_step | tee runs/train_step.jsonl
    python3 scripts/bench_table.py runs/*.jsonl > runs/table.md
"""
import json
import sys


def rows(paths):
    for path in paths:
        with (sys.stdin if path == "-" else open(path)) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        pass


def cell(v):
    # Booleans as JSON writes them.
    return json.dumps(v) if isinstance(v, bool) else str(v)


def main():
    by_bench = {}
    for r in rows(sys.argv[1:] or ["-"]):
        # An example's line may carry `"bench": true` (a timing mode); its name is the example's.
        name = r["bench"] if isinstance(r.get("bench"), str) else r.get("example", "?")
        by_bench.setdefault(name, []).append(r)
    for name, rs in by_bench.items():
        keys = []
        for r in rs:
            keys += [k for k in r if k not in keys and k not in ("bench", "example")]
        print(f"### {name}\n")
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
        for r in rs:
            print("| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |")
        print()


if __name__ == "__main__":
    main()
