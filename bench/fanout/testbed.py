"""Emulated hosts on one machine: network namespaces on one bridge, each
link shaped in both directions with tc.

Every host is a namespace with a veth pair into a bridge in the root
namespace. A host's upload is shaped on its own end of the pair, its
download on the bridge end. Addresses are private (10.77.x.y) and exist
only inside the namespaces this module creates; nothing is routed anywhere
else. Everything is torn down on exit, on Ctrl-C, and on SIGTERM; `cleanup`
also removes what a killed run left behind.
"""

import atexit
import os
import signal
import subprocess
import sys

PREFIX = "dffsfo"  # every name this module creates starts with it


def sh(*argv, check=True, quiet=False):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} failed: {r.stderr.strip()}")
    return r


def cleanup_leftovers():
    """Removes namespaces and links left by earlier runs of this module."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(PREFIX):
            sh("ip", "netns", "del", name, check=False)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0] if ":" in line else ""
        if name.startswith(PREFIX):
            sh("ip", "link", "del", name, check=False)


class Testbed:
    """`hosts` namespaces; host i has address 10.77.0.(i+1)."""

    def __init__(self, hosts, rate_mbit=100, origin_up_mbit=None, offloads=True, queue_ms=100, mtu=1500):
        if os.geteuid() != 0:
            sys.exit("error: the fanout testbed needs root (network namespaces, tc)")
        self.tag = f"{PREFIX}{os.getpid() % 100000}"
        self.bridge = f"{self.tag}b"
        self.hosts = hosts
        self.rate = rate_mbit
        self.origin_up = origin_up_mbit or rate_mbit
        self.offloads = offloads
        self.queue_ms = queue_ms
        self.mtu = mtu
        self.procs = []
        self.created = []
        atexit.register(self.close)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.close()
        sys.exit(128 + signum)

    def ns(self, i):
        return f"{self.tag}h{i}"

    def ip(self, i):
        return f"10.77.{i // 250}.{i % 250 + 1}"

    def __enter__(self):
        sh("ip", "link", "add", self.bridge, "mtu", str(self.mtu), "type", "bridge")
        self.created.append(("link", self.bridge))
        sh("ip", "link", "set", self.bridge, "up")
        for i in range(self.hosts):
            self._add_host(i)
        return self

    def _add_host(self, i):
        ns, outer, inner = self.ns(i), f"{self.tag}v{i}", f"{self.tag}p{i}"
        sh("ip", "netns", "add", ns)
        self.created.append(("netns", ns))
        sh("ip", "link", "add", outer, "mtu", str(self.mtu), "type", "veth", "peer", "name", inner, "mtu", str(self.mtu))
        self.created.append(("link", outer))
        sh("ip", "link", "set", inner, "netns", ns)
        sh("ip", "link", "set", outer, "master", self.bridge, "up")
        run = lambda *a: sh("ip", "netns", "exec", ns, *a)
        run("ip", "link", "set", inner, "name", "eth0")
        run("ip", "addr", "add", f"{self.ip(i)}/16", "dev", "eth0")
        run("ip", "link", "set", "eth0", "up")
        run("ip", "link", "set", "lo", "up")
        for setting in os.environ.get("DFFS_TESTBED_SYSCTL", "").split():
            run("sysctl", "-q", "-w", setting)
        if not self.offloads:
            for dev_ns, dev in ((ns, "eth0"), (None, outer)):
                argv = ["ethtool", "-K", dev, "tso", "off", "gso", "off", "gro", "off"]
                sh(*(["ip", "netns", "exec", dev_ns] + argv if dev_ns else argv), check=False)
        up = self.origin_up if i == 0 else self.rate
        # Upload: the host's own end. Download: the bridge's end toward it.
        # tbf's burst must hold a whole GSO packet (64 KiB).
        latency = f"{self.queue_ms}ms"
        run("tc", "qdisc", "add", "dev", "eth0", "root", "tbf", "rate", f"{up}mbit", "burst", "256kb", "latency", latency)
        sh("tc", "qdisc", "add", "dev", outer, "root", "tbf", "rate", f"{self.rate}mbit", "burst", "256kb",
           "latency", latency)

    def spawn(self, i, argv, log, env=None):
        """Runs argv inside host i's namespace, output to `log`."""
        out = open(log, "ab")
        p = subprocess.Popen(["ip", "netns", "exec", self.ns(i), *map(str, argv)], stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, env=env)
        self.procs.append(p)
        return p

    def run(self, i, argv, **kw):
        return subprocess.run(["ip", "netns", "exec", self.ns(i), *map(str, argv)], **kw)

    def kill(self, p):
        if p.poll() is None:
            p.kill()
            p.wait()

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []
        for kind, name in reversed(self.created):
            if kind == "netns":
                sh("ip", "netns", "del", name, check=False)
            else:
                sh("ip", "link", "del", name, check=False)
        self.created = []

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    if sys.argv[1:] == ["cleanup"]:
        cleanup_leftovers()
    else:
        sys.exit("usage: testbed.py cleanup")
