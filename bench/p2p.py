#!/usr/bin/env python3
"""Peer-to-peer data plane benchmarks (issue "P2P download end to end").

1. Throughput: one parent -> one child on loopback, for a file the parent
   already holds, against nginx (sendfile) -> curl of the same file. Both
   write the file to the same disk; runs alternate so both see the same
   machine state.
2. Small-file latency: dfget of 1 KiB files through a warm cluster (each
   file cached on a parent, new to the child), against curl from nginx.

Usage: bench/p2p.py [--size-mib 1024] [--runs 5] [--small-files 40]
"""

import argparse
import os
import subprocess

from common import MIB, Bench, median, percentile, timed, write_random


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--small-files", type=int, default=40)
    args = ap.parse_args()
    size = args.size_mib * MIB

    with Bench() as b:
        write_random(b.origin_dir / "big.bin", size)
        for i in range(args.small_files):
            write_random(b.origin_dir / f"small{i}.bin", 1024)
        b.start_nginx()
        b.start_scheduler()
        parent = b.start_peer("parent")
        parent.dfget(b.url("big.bin"), b.dir / "warm.out")
        os.remove(b.dir / "warm.out")
        for i in range(args.small_files):
            parent.dfget(b.url(f"small{i}.bin"), b.dir / "warm.out")
        # The parent just wrote its copy, so it is in the page cache; read
        # nginx's file once so it is too.
        timed(["cat", str(b.origin_dir / "big.bin")])

        out = b.dir / "out.bin"
        dfget_times, curl_times = [], []
        for _ in range(args.runs):
            subprocess.run(["sync"])
            curl_times.append(timed(["curl", "-s", "-o", str(out), b.url("big.bin")]))
            os.remove(out)
            subprocess.run(["sync"])
            child = b.start_peer("child")
            dfget_times.append(child.dfget(b.url("big.bin"), out))
            os.remove(out)
            child.stop()

        gbps = lambda t: size / t / 1e9
        d, c = gbps(median(dfget_times)), gbps(median(curl_times))
        print(f"\nthroughput, {args.size_mib} MiB, loopback, median of {args.runs} runs")
        print(f"  dfget  parent -> child : {d:6.2f} GB/s   runs: {', '.join(f'{gbps(t):.2f}' for t in dfget_times)}")
        print(f"  nginx sendfile -> curl : {c:6.2f} GB/s   runs: {', '.join(f'{gbps(t):.2f}' for t in curl_times)}")
        print(f"  ratio dfget/curl       : {d / c:6.2f}x  (target >= 1.0x)")

        child = b.start_peer("latency-child")
        lat, curl_lat = [], []
        for i in range(args.small_files):
            lat.append(child.dfget(b.url(f"small{i}.bin"), b.dir / "small.out"))
            curl_lat.append(timed(["curl", "-s", "-o", str(b.dir / "small.out"), b.url(f"small{i}.bin")]))
        ms = lambda t: t * 1000
        print(f"\nsmall-file latency, 1 KiB, cached on a parent, new to the child, {args.small_files} files")
        print(f"  dfget : median {ms(median(lat)):6.1f} ms   p90 {ms(percentile(lat, 90)):6.1f} ms  (target median <= 30 ms)")
        print(f"  curl  : median {ms(median(curl_lat)):6.1f} ms   p90 {ms(percentile(curl_lat, 90)):6.1f} ms  (nginx, no P2P)")

        print(f"\nbench p2p_throughput size_mib={args.size_mib} dfget_gbps={d:.2f} curl_gbps={c:.2f} ratio={d / c:.2f}")
        print(f"bench small_file_latency median_ms={ms(median(lat)):.1f} p90_ms={ms(percentile(lat, 90)):.1f} "
              f"curl_median_ms={ms(median(curl_lat)):.1f}")


if __name__ == "__main__":
    main()
