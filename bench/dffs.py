#!/usr/bin/env python3
"""dffs read benchmarks (issue "dffs: the lazy P2P filesystem").

1. Warm: sequential read of a fully cached task through /dfly (FUSE
   passthrough) against `cat` of peerd's content file, both in the page
   cache.
2. Cold: sequential read of a task held by a peer on loopback, through a
   fresh dffs mount on a fresh host, against `rclone mount` (http remote)
   reading the same file from a loopback nginx origin.
3. Latency of cold 4 KiB random reads through dffs (each touches a piece
   the reading host lacks, held by a peer): p50 and p99.

Usage (as root): bench/dffs.py [--size-mib 1024] [--runs 3] [--random-reads 200]
"""

import argparse
import os
import random
import shutil
import subprocess
import time

from common import (MIB, Bench, dffs_mount, dfget_id, drop_caches, median, mounted, percentile, timed, umount,
                    wait_until, write_random)


def read_all(path):
    return timed(["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--random-reads", type=int, default=200)
    args = ap.parse_args()
    size = args.size_mib * MIB
    gbps = lambda t: size / t / 1e9

    with Bench() as b:
        write_random(b.origin_dir / "big.bin", size)
        b.start_nginx()
        b.start_scheduler()
        url = b.url("big.bin")
        task = dfget_id(b, url)
        parent = b.start_peer("parent")
        parent.dfget(url, b.dir / "warm.out")
        os.remove(b.dir / "warm.out")
        content = next((parent.dir / "data" / "tasks").glob(f"*/{task}/content"))

        # 1. warm
        mnt, _ = dffs_mount(b, parent, "mnt-parent")
        read_all(content)
        read_all(mnt / task)
        warm_dffs, warm_cat = [], []
        for _ in range(args.runs):
            warm_cat.append(read_all(content))
            warm_dffs.append(read_all(mnt / task))
        umount(mnt)

        # 2. cold: a new host each run (default mount, then -o direct_io=0),
        # and a new rclone mount each run
        cold_dffs, cold_cached, cold_rclone = [], [], []
        rclone = shutil.which("rclone")
        for run in range(args.runs):
            for mode, times, extra in (("", cold_dffs, ()), ("-cached", cold_cached, ("-o", "direct_io=0"))):
                child = b.start_peer(f"child{run}{mode}")
                cmnt, cproc = dffs_mount(b, child, f"mnt-child{run}{mode}", extra)
                drop_caches()
                read_all(content)  # the parent's copy stays warm, as a peer's would
                times.append(read_all(cmnt / task))
                umount(cmnt)
                child.stop()
            if rclone:
                rmnt = b.dir / f"rclone{run}"
                rmnt.mkdir()
                rp = b.procs.start(f"rclone{run}", [rclone, "mount", ":http:", str(rmnt), "--http-url",
                                                   f"http://127.0.0.1:{b.nginx_port}/", "--read-only"])
                wait_until("rclone mount", lambda: mounted(rmnt))
                read_all(b.origin_dir / "big.bin")  # nginx's file in the page cache
                try:
                    cold_rclone.append(read_all(rmnt / "big.bin"))
                finally:
                    umount(rmnt)
                    b.procs.stop(rp)

        # 3. cold random 4 KiB reads
        child = b.start_peer("random-child")
        rmnt, _ = dffs_mount(b, child, "mnt-random")
        rng = random.Random(7)
        lat = []
        fd = os.open(rmnt / task, os.O_RDONLY)
        pieces = rng.sample(range(size // MIB), min(args.random_reads, size // MIB))
        for p in pieces:
            offset = p * MIB + rng.randrange(0, MIB - 4096, 4096)
            t = time.perf_counter()
            os.pread(fd, 4096, offset)
            lat.append(time.perf_counter() - t)
        os.close(fd)
        umount(rmnt)

        wd, wc = gbps(median(warm_dffs)), gbps(median(warm_cat))
        cd = gbps(median(cold_dffs))
        ccached = gbps(median(cold_cached))
        print(f"\nwarm sequential read, {args.size_mib} MiB in the page cache, median of {args.runs}")
        print(f"  dffs (/dfly, passthrough) : {wd:6.2f} GB/s")
        print(f"  cat of the content file   : {wc:6.2f} GB/s")
        print(f"  ratio                     : {wd / wc:6.2f}x  (target >= 0.9x)")
        print(f"\ncold sequential read, {args.size_mib} MiB held by a peer on loopback, median of {args.runs}")
        print(f"  dffs (fresh host)         : {cd:6.2f} GB/s   runs: {', '.join(f'{gbps(t):.2f}' for t in cold_dffs)}")
        print(f"  dffs -o direct_io=0       : {ccached:6.2f} GB/s   runs: {', '.join(f'{gbps(t):.2f}' for t in cold_cached)}")
        if cold_rclone:
            cr = gbps(median(cold_rclone))
            print(f"  rclone mount (http)       : {cr:6.2f} GB/s   runs: {', '.join(f'{gbps(t):.2f}' for t in cold_rclone)}")
            print(f"  ratio                     : {cd / cr:6.2f}x  (target >= 2x)")
            print(f"  ratio with direct_io=0    : {ccached / cr:6.2f}x")
        else:
            cr = float("nan")
            print("  rclone not installed: apt-get install rclone")
        ms = lambda t: t * 1000
        print(f"\ncold 4 KiB random reads through dffs ({len(lat)} reads, each a piece new to the host)")
        print(f"  p50 {ms(percentile(lat, 50)):.2f} ms   p99 {ms(percentile(lat, 99)):.2f} ms")
        print(f"\nbench dffs_warm dffs_gbps={wd:.2f} cat_gbps={wc:.2f} ratio={wd / wc:.2f}")
        print(f"bench dffs_cold dffs_gbps={cd:.2f} rclone_gbps={cr:.2f} ratio={cd / cr:.2f}")
        print(f"bench dffs_cold_page_cache dffs_gbps={ccached:.2f} rclone_gbps={cr:.2f} ratio={ccached / cr:.2f}")
        print(f"bench dffs_random_4k p50_ms={ms(percentile(lat, 50)):.2f} p99_ms={ms(percentile(lat, 99)):.2f}")


if __name__ == "__main__":
    main()
