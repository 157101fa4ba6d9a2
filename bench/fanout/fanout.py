#!/usr/bin/env python3
"""Fan-out benchmark: how long until N hosts all have a file, and how many
copies the origin served, for dffs (dfget and lazy reads through the mount)
against every host fetching from the origin with curl.

Host 0 runs the origin, host 1 the scheduler and the seed, hosts 2..N+1 a
peerd each (and, for the dffs scenario, a dffs mount in the root namespace
that reaches its peerd over the Unix socket). All hosts start at once.

    bound = max(S/U0, S/D, N*S/(U0 + N*U))   (DESIGN §4)

Usage (as root):
    bench/fanout/fanout.py --n 4,8,16,24 --size-mib 128 --link-mbit 100 --plot fanout.png
"""

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from testbed import Testbed  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
MIB = 1 << 20
ORIGIN_PORT = 8080


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MIB):
            h.update(chunk)
    return h.hexdigest()


def wait_until(what, check, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == str(path) for line in f)


class Run:
    """One scenario at one N on a testbed."""

    def __init__(self, tb, bins, work, n, url, out_dir=None):
        self.tb, self.bins, self.work, self.n, self.url = tb, bins, work, n, url
        # Where the clients write their copies: the work directory unless
        # told otherwise (--out-dir).
        self.out_dir = out_dir or work
        self.hosts = list(range(2, n + 2))
        self.mounts = []
        self.daemons = []

    def origin(self, path):
        r = self.tb.run(0, ["curl", "-s", "-X", "POST" if path == "_reset" else "GET",
                            f"http://{self.tb.ip(0)}:{ORIGIN_PORT}/{path}"], capture_output=True, text=True)
        return r.stdout

    def start_cluster(self):
        tb, b, w = self.tb, self.bins, self.work
        sched = f"{tb.ip(1)}:8002"
        self.daemons.append(tb.spawn(1, [b / "scheduler", "--listen", sched, "--log-level", "warn"], w / "scheduler.log"))
        wait_until("scheduler", lambda: tb.run(1, ["bash", "-c", f"exec 3<>/dev/tcp/{tb.ip(1)}/8002"],
                                                stderr=subprocess.DEVNULL).returncode == 0)
        peers = [(1, "seed")] + [(h, "peerd") for h in self.hosts]
        for h, binary in peers:
            d = w / f"h{h}"
            d.mkdir()
            level = os.environ.get("DFFS_FANOUT_SEED_LOG" if binary == "seed" else "DFFS_FANOUT_PEER_LOG", "warn")
            self.daemons.append(tb.spawn(h, [b / binary, "--scheduler", sched, "--data-dir", d / "data",
                                             "--socket", d / "peerd.sock", "--upload-addr", "0.0.0.0:65002",
                                             "--metrics-addr", "127.0.0.1:65003", "--log-level", level,
                                             *os.environ.get("DFFS_FANOUT_PEERD_ARGS", "").split(),
                                             *(os.environ.get("DFFS_FANOUT_SEED_ARGS", "").split()
                                               if binary == "seed" else [])],
                                         w / f"h{h}.log"))
        for h, _ in peers:
            sock = w / f"h{h}" / "peerd.sock"
            wait_until(f"peerd on host {h}", sock.exists)
        time.sleep(0.5)  # let every host announce itself

    def socket(self, h):
        return self.work / f"h{h}" / "peerd.sock"

    def out(self, h):
        return self.out_dir / f"{self.work.name}-h{h}.out" if h >= 2 else None

    def clients(self, scenario):
        """Starts one client per host; returns (host, Popen) pairs."""
        tb, b = self.tb, self.bins
        if scenario == "curl":
            return [(h, tb.spawn(h, ["curl", "-sf", "-o", self.out(h), self.url], self.work / f"c{h}.log"))
                    for h in self.hosts]
        if scenario == "dfget":
            return [(h, tb.spawn(h, [b / "dfget", self.url, "-O", self.out(h), "--socket", self.socket(h), "--quiet"],
                                 self.work / f"c{h}.log")) for h in self.hosts]
        task = self.task
        procs = []
        for h, mnt in zip(self.hosts, self.mounts):
            log = open(self.work / f"c{h}.log", "ab")
            procs.append((h, subprocess.Popen(["cp", str(mnt / task), str(self.out(h))], stdout=log, stderr=log)))
        return procs

    def mount_all(self):
        for h in self.hosts:
            mnt = self.work / f"mnt{h}"
            mnt.mkdir()
            log = open(self.work / f"dffs{h}.log", "ab")
            p = subprocess.Popen([str(self.bins / "dffs"), "mount", str(mnt), "--socket", str(self.socket(h)), "-f",
                                  "--metrics-addr", "none", "--timeout", "600",
                                  *os.environ.get("DFFS_MOUNT_ARGS", "").split()], stdout=log, stderr=log)
            self.daemons.append(p)
            wait_until(f"dffs mount {h}", lambda: mounted(mnt))
            self.mounts.append(mnt)
        added = subprocess.run([str(self.bins / "dffs"), "add", self.url, "--socket", str(self.socket(self.hosts[0]))],
                               capture_output=True, text=True)
        if added.returncode != 0:
            raise RuntimeError(f"dffs add failed: {added.stderr}")
        self.task = added.stdout.strip()

    def close(self):
        for mnt in self.mounts:
            subprocess.run(["umount", "-l", str(mnt)], stderr=subprocess.DEVNULL)
        for p in self.daemons:
            if p.poll() is None:
                p.kill()
                p.wait()


def metrics_of(tb, h):
    r = tb.run(h, ["curl", "-s", "http://127.0.0.1:65003/metrics"], capture_output=True, text=True)
    values = {}
    for line in r.stdout.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            values[key] = float(value)
    return values


def link_losses(tb, h):
    """Packets host h's shaped links dropped (up, down) and its TCP
    counters: losses that make TCP back off and leave a link part idle."""
    def dropped(argv):
        out = subprocess.run(argv, capture_output=True, text=True).stdout
        match = re.search(r"dropped (\d+)", out)
        return int(match[1]) if match else -1
    tcp = subprocess.run(["ip", "netns", "exec", tb.ns(h), "nstat", "-az", "TcpRetransSegs", "TcpExtTCPTimeouts",
                          "TcpOutSegs"], capture_output=True, text=True).stdout
    counters = dict(re.findall(r"(\w+)\s+(\d+)", tcp))
    return (dropped(["ip", "netns", "exec", tb.ns(h), "tc", "-s", "qdisc", "show", "dev", "eth0"]),
            dropped(["tc", "-s", "qdisc", "show", "dev", f"{tb.tag}v{h}"]),
            {k: int(v) for k, v in counters.items()})


def debug_report(run, size):
    """Per-host upload and download shares, to see where a swarm stalls."""
    for h in [1] + run.hosts:
        m = metrics_of(run.tb, h)
        up = sum(v for k, v in m.items() if k.startswith("dffs_upload_bytes_total"))
        peer = sum(v for k, v in m.items() if k.startswith("dffs_download_bytes_total") and 'source="peer"' in k)
        origin = sum(v for k, v in m.items() if k.startswith("dffs_download_bytes_total") and 'source="origin"' in k)
        redirects = sum(v for k, v in m.items() if k.startswith("dffs_upload_redirects_total"))
        followed = {k.split('result="')[1][:-2]: v for k, v in m.items() if k.startswith("dffs_redirects_followed_total")}
        fails = {k.split('reason="')[1].split('"')[0]: v for k, v in m.items() if k.startswith("dffs_piece_failures_total")}
        print(f"    host {h}: up {up / size:5.2f} copies, from peers {peer / size:4.2f}, from origin {origin / size:4.2f}, "
              f"redirects sent {redirects:.0f}, followed {followed}, failures {fails}, "
              f"drops up/down, TCP {link_losses(run.tb, h)}", flush=True)


class Sampler:
    """Calls `take` every `every` seconds on a background thread and keeps
    what it returns in `rows`, until `halt`."""

    def __init__(self, every):
        self.rows = []
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.stop.wait(self.every):
            self.rows.append(self.take())

    def take(self):
        raise NotImplementedError

    def halt(self):
        self.stop.set()
        self.thread.join()


class Timeline(Sampler):
    """Samples, once a second, the seed's origin and upload bytes and the
    download and upload bytes of two peers, to show whether the seed or the
    swarm holds the run back."""

    def __init__(self, run, size):
        self.run, self.size = run, size
        self.t0 = time.monotonic()
        super().__init__(1.0)

    def take(self):
        def total(m, prefix, label=""):
            return sum(v for k, v in m.items() if k.startswith(prefix) and label in k)
        seed = metrics_of(self.run.tb, 1)
        # Two peers only: sampling every host would load the machine.
        peers = [metrics_of(self.run.tb, h) for h in (self.run.hosts[0], self.run.hosts[-1])]
        got = [total(m, "dffs_download_bytes_total") / self.size for m in peers]
        return (time.monotonic() - self.t0, total(seed, "dffs_download_bytes_total", 'source="origin"'),
                total(seed, "dffs_upload_bytes_total"), min(got), sum(got) / len(got),
                sum(total(m, "dffs_upload_bytes_total") for m in peers))

    def report(self):
        self.halt()
        print("      t    seed<-origin  seed->up  2 peers min/mean done  2 peers up (copies)", flush=True)
        for t, origin, up, low, mean, peers_up in self.rows:
            print(f"    {t:5.1f}s   {origin / self.size:6.2f}    {up / self.size:6.2f}     {low:5.2f} / {mean:5.2f}"
                  f"        {peers_up / self.size:6.2f}", flush=True)


class CpuIdle(Sampler):
    """The machine's idle share while a scenario runs: its average and its
    busiest second. At 0% the 2 cores, not the emulated links, set the pace,
    and a result says more about the machine than about the product."""

    def __init__(self):
        self.first = self.take()
        super().__init__(0.5)

    @staticmethod
    def take():
        """(idle, total) jiffies of all CPUs; iowait counts as idle."""
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:9]]
        return fields[3] + fields[4], sum(fields)

    @staticmethod
    def idle(a, b):
        """Idle percent between samples a and b."""
        return 100.0 * (b[0] - a[0]) / max(b[1] - a[1], 1)

    def finish(self):
        """(average idle %, idle % of the busiest second)."""
        self.halt()
        samples = [self.first, *self.rows, self.take()]  # 0.5 s apart
        average = self.idle(samples[0], samples[-1])
        seconds = [self.idle(a, b) for a, b in zip(samples, samples[2:])]
        return average, min(seconds, default=average)


def run_scenario(tb, bins, base, scenario, n, size, expected, url, link_mbit, origin_mbit, out_dir=None):
    work = Path(tempfile.mkdtemp(prefix=f"{scenario}-n{n}-", dir=base))
    run = Run(tb, bins, work, n, url, out_dir)
    try:
        if scenario != "curl":
            run.start_cluster()
        if scenario == "dffs":
            run.mount_all()
        run.origin("_reset")
        timeline = Timeline(run, size) if os.environ.get("DFFS_FANOUT_DEBUG") and scenario != "curl" else None
        t0 = time.monotonic()
        if timeline:
            print(f"    clients start at {time.strftime('%H:%M:%S', time.gmtime())}.{int(time.time() % 1 * 1000):03d} UTC",
                  flush=True)
        cpu = CpuIdle()
        clients = run.clients(scenario)
        ends, codes = {}, {}
        while len(ends) < len(clients):
            for h, p in clients:
                if h not in ends and p.poll() is not None:
                    ends[h], codes[h] = time.monotonic() - t0, p.returncode
            time.sleep(0.01)
        idle_avg, idle_min = cpu.finish()
        served = json.loads(run.origin("_stats"))["bytes_served"]
        if os.environ.get("DFFS_FANOUT_DEBUG") and scenario != "curl":
            debug_report(run, size)
            print("    done at: " + " ".join(f"h{h}={t:.2f}" for h, t in sorted(ends.items())), flush=True)
            timeline.report()
            for h in [1] + run.hosts:
                shutil.copy(work / f"h{h}.log", Path(tempfile.gettempdir()) / f"fanout-{scenario}-n{n}-h{h}.log")
                if (work / f"dffs{h}.log").exists():
                    shutil.copy(work / f"dffs{h}.log", Path(tempfile.gettempdir()) / f"fanout-{scenario}-n{n}-dffs{h}.log")
        failed = [h for h in run.hosts if codes[h] != 0 or sha256(run.out(h)) != expected]
        for h in failed:
            tail = (work / f"c{h}.log").read_text(errors="replace").strip().splitlines()[-3:]
            print(f"    host {h} failed (exit {codes[h]}): " + " / ".join(tail), flush=True)
        verified = len(run.hosts) - len(failed)
    finally:
        run.close()
        for h in run.hosts:
            run.out(h).unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        # The next scenario must not pay for this one's writeback: 2 cores
        # carry every host (dffs at N=24 gave 1.47 at the end of a full
        # run, 1.30-1.36 on its own).
        os.sync()
    times = sorted(ends.values())
    rate = link_mbit * 1e6 / 8
    u0 = origin_mbit * 1e6 / 8
    bound = max(size / u0, size / rate, n * size / (u0 + n * rate))
    return {
        "scenario": scenario, "n": n, "size_mib": size // MIB, "link_mbit": link_mbit,
        "first": times[0], "median": statistics.median(times), "last": times[-1], "bound": bound,
        "last_over_bound": times[-1] / bound, "origin_copies": served / size, "verified": verified,
        "idle_avg": idle_avg, "idle_min": idle_min,
    }


def plot(results, path):
    data = Path(tempfile.mkdtemp()) / "fanout.dat"
    scenarios = sorted({r["scenario"] for r in results})
    blocks = []
    for s in scenarios:
        rows = sorted((r["n"], r["last"], r["bound"]) for r in results if r["scenario"] == s)
        blocks.append("\n".join(f"{n} {last:.3f} {bound:.3f}" for n, last, bound in rows))
    data.write_text("\n\n\n".join(blocks) + "\n")
    size = results[0]["size_mib"]
    link = results[0]["link_mbit"]
    lines = [f"'{data}' index {i} using 1:2 with linespoints lw 2 pt 7 title '{s} (last host)'"
             for i, s in enumerate(scenarios)]
    lines.append(f"'{data}' index 0 using 1:3 with lines dt 2 lw 2 lc rgb 'black' title 'line-rate bound'")
    script = f"""
set terminal pngcairo size 900,560 font ',11'
set output '{path}'
set title 'Time until all N hosts hold {size} MiB ({link} Mbit/s links)'
set xlabel 'hosts (N)'
set ylabel 'completion time of the last host (s)'
set logscale y
set grid
set key top left
plot {', '.join(lines)}
"""
    subprocess.run(["gnuplot"], input=script, text=True, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="4,8,16,24", help="host counts, comma-separated")
    ap.add_argument("--size-mib", type=int, default=128)
    ap.add_argument("--link-mbit", type=int, default=100)
    ap.add_argument("--origin-mbit", type=int, help="origin uplink (default: --link-mbit)")
    ap.add_argument("--scenarios", default="dfget,dffs,curl")
    ap.add_argument("--bin-dir", default=os.environ.get("DFFS_BIN_DIR", str(ROOT / "target" / "release")))
    ap.add_argument("--plot", help="write a PNG plot here")
    ap.add_argument("--out-dir", type=Path,
                    help="where every host's client writes its copy (default: the run's work directory, on disk); "
                         "a tmpfs here takes the writeback of N copies off the shared cores")
    ap.add_argument("--no-offloads", action="store_true", help="turn segmentation offloads off on every veth")
    ap.add_argument("--queue-ms", type=int, default=100, help="tbf queue of every link, in ms of traffic")
    ap.add_argument("--mtu", type=int, default=9000,
                    help="MTU of every link; jumbo frames keep 2 cores from saturating at N=24 (1500: ~0%% idle)")
    args = ap.parse_args()
    bins = Path(args.bin_dir)
    for name in ("scheduler", "seed", "peerd", "dfget", "dffs", "dffs-test-origin"):
        if not (bins / name).exists():
            sys.exit(f"error: {bins / name} is missing; run `cargo build --release --workspace --bins`")
    counts = [int(x) for x in args.n.split(",")]
    scenarios = args.scenarios.split(",")
    size = args.size_mib * MIB
    origin_mbit = args.origin_mbit or args.link_mbit
    base = Path(tempfile.mkdtemp(prefix="dffs-fanout-", dir=os.environ.get("DFFS_BENCH_DIR", "/var/tmp")))
    origin_dir = base / "origin"
    origin_dir.mkdir()
    data = origin_dir / "file.bin"
    with open(data, "wb") as f:
        for _ in range(args.size_mib):
            f.write(os.urandom(MIB))
    expected = sha256(data)
    results = []
    print(f"{'scenario':8} {'N':>3} {'MiB':>5} {'Mbit':>5} {'first':>7} {'median':>7} {'last':>7} {'bound':>6} "
          f"{'last/bound':>10} {'origin':>7} {'verified':>8} {'cpu idle avg/min':>16}", flush=True)
    try:
        for n in counts:
            with Testbed(n + 2, args.link_mbit, origin_mbit, offloads=not args.no_offloads,
                         queue_ms=args.queue_ms, mtu=args.mtu) as tb:
                origin = tb.spawn(0, [bins / "dffs-test-origin", "--root", origin_dir,
                                      "--listen", f"{tb.ip(0)}:{ORIGIN_PORT}",
                                      *os.environ.get("DFFS_FANOUT_ORIGIN_ARGS", "").split()], base / "origin.log")
                wait_until("origin", lambda: tb.run(0, ["curl", "-sf", f"http://{tb.ip(0)}:{ORIGIN_PORT}/_stats"],
                                                    capture_output=True).returncode == 0)
                url = f"http://{tb.ip(0)}:{ORIGIN_PORT}/file.bin"
                for s in scenarios:
                    r = run_scenario(tb, bins, base, s, n, size, expected, url, args.link_mbit, origin_mbit,
                                     args.out_dir)
                    results.append(r)
                    print(f"{s:8} {n:>3} {r['size_mib']:>5} {args.link_mbit:>5} {r['first']:>6.1f}s {r['median']:>6.1f}s "
                          f"{r['last']:>6.1f}s {r['bound']:>5.1f}s {r['last_over_bound']:>10.2f} "
                          f"{r['origin_copies']:>7.2f} {r['verified']:>5}/{n} {r['idle_avg']:>9.0f}% / {r['idle_min']:.0f}%",
                          flush=True)
                tb.kill(origin)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.plot and results:
        plot(results, args.plot)
        print(f"\nplot written to {args.plot}")
    print(f"\noffloads {'off' if args.no_offloads else 'on'} on every veth; MTU {args.mtu}; tbf queue {args.queue_ms} ms; "
          f"origin uplink {origin_mbit} Mbit/s")
    for r in results:
        print(f"fanout scenario={r['scenario']} n={r['n']} size_mib={r['size_mib']} link_mbit={r['link_mbit']} "
              f"last_over_bound={r['last_over_bound']:.2f} origin_copies={r['origin_copies']:.2f} "
              f"verified={r['verified']}/{r['n']}")


if __name__ == "__main__":
    main()
