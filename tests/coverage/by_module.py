#!/usr/bin/env python3
"""Line coverage of src/ per module from cargo-tarpaulin's JSON report.

usage: tests/coverage/by_module.py coverage/tarpaulin-report.json

Prints a Markdown table: each directory under src/ (and each top-level file) with the
lines tarpaulin could instrument, those the tests ran, and the share; then the total, and
the least covered files.
"""
import json
import sys
from collections import defaultdict


def module_of(parts):
    i = parts.index("src")
    rest = parts[i + 1:]
    if rest[:3] == ["hub", "broker", "redis"]:
        return "hub/broker/redis"  # the cluster broker, apart from the in-process hub
    return rest[0] if len(rest) > 1 else rest[0].removesuffix(".rs")


def main(path):
    report = json.load(open(path))
    modules = defaultdict(lambda: [0, 0])
    files = []
    for f in report["files"]:
        parts = f["path"]
        if "src" not in parts:
            continue
        covered, coverable = f["covered"], f["coverable"]
        m = modules[module_of(parts)]
        m[0] += covered
        m[1] += coverable
        if coverable:
            files.append((covered / coverable, coverable - covered, "/".join(parts[parts.index("src"):])))
    total = [sum(m[0] for m in modules.values()), sum(m[1] for m in modules.values())]
    print("| Module | Lines | Covered | Share |")
    print("|---|---:|---:|---:|")
    for name, (c, n) in sorted(modules.items()):
        if n == 0:
            continue
        print(f"| `{name}` | {n} | {c} | {100 * c / max(n, 1):.1f}% |")
    print(f"| **all of `src/`** | {total[1]} | {total[0]} | **{100 * total[0] / max(total[1], 1):.1f}%** |")
    print()
    print("Least covered files (share, lines not run):")
    for share, missed, name in sorted(files)[:10]:
        print(f"- `{name}`: {100 * share:.1f}%, {missed} lines")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "coverage/tarpaulin-report.json")
