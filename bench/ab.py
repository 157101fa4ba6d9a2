#!/usr/bin/env python3
"""Compares two builds of dffs with one benchmark, in interleaved pairs.

    bench/ab.py --a OLD/target/release --b target/release --pairs 5 -- \\
        bench/p2p.py --size-mib 1024 --runs 1

Runs the benchmark command alternately with DFFS_BIN_DIR set to build A and
to build B (A, B, A, B, ...; which goes first alternates too), so that
drift on a noisy machine hits both alike. It collects the machine-readable
lines every benchmark ends with (`bench NAME key=value ...` and
`fanout scenario=S n=N ... key=value`), and prints, per figure, the median
of A, the median of B, B/A, and in how many pairs B was higher.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys


def figures(output):
    """{name: value} from a benchmark's machine-readable lines."""
    found = {}
    for line in output.splitlines():
        words = line.split()
        if not words or words[0] not in ("bench", "fanout"):
            continue
        pairs = dict(w.split("=", 1) for w in words[1:] if "=" in w)
        if words[0] == "bench":
            prefix = words[1]
        else:
            prefix = f"fanout.{pairs.pop('scenario', '?')}.n{pairs.pop('n', '?')}"
        for key, value in pairs.items():
            if re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", value):
                found[f"{prefix}.{key}"] = float(value)
    return found


def run(command, bin_dir):
    env = dict(os.environ, DFFS_BIN_DIR=os.path.abspath(bin_dir))
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        sys.exit(f"error: {' '.join(command)} failed with build {bin_dir} (exit {done.returncode})")
    return figures(done.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="binary directory of build A (the baseline)")
    ap.add_argument("--b", required=True, help="binary directory of build B")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the benchmark command")
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        sys.exit("error: give the benchmark command after --")
    results = {"a": [], "b": []}
    for i in range(args.pairs):
        order = ("a", "b") if i % 2 == 0 else ("b", "a")
        for which in order:
            got = run(command, getattr(args, which))
            results[which].append(got)
            shown = " ".join(f"{k}={v:g}" for k, v in sorted(got.items()))
            print(f"pair {i + 1} {which.upper()}: {shown}", flush=True)
    names = sorted(set().union(*results["a"], *results["b"]))
    print(f"\n{'figure':<48} {'A median':>10} {'B median':>10} {'B/A':>6}  B higher")
    for name in names:
        a = [r[name] for r in results["a"] if name in r]
        b = [r[name] for r in results["b"] if name in r]
        if not a or not b:
            continue
        ma, mb = statistics.median(a), statistics.median(b)
        higher = sum(1 for x, y in zip(a, b) if y > x)
        ratio = mb / ma if ma else float("nan")
        print(f"{name:<48} {ma:>10.3f} {mb:>10.3f} {ratio:>6.3f}  {higher}/{min(len(a), len(b))}")
        print(f"ab {name} a_median={ma:.4f} b_median={mb:.4f} ratio={ratio:.4f} pairs={min(len(a), len(b))}")


if __name__ == "__main__":
    main()
