"""Shared plumbing for the dffs benchmarks: start daemons, nginx, time runs.

Every benchmark runs dffs and its baseline side by side in one run, on the
same files, and reports the ratio. Nothing here is a test: figures vary
with the machine; the scripts print them and the issue notes quote them.
"""

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20


def bin_dir():
    d = Path(os.environ.get("DFFS_BIN_DIR", ROOT / "target" / "release"))
    for name in ("scheduler", "peerd", "seed", "dfget"):
        if not (d / name).exists():
            sys.exit(f"error: {d / name} is missing; run `cargo build --release --workspace --bins` first")
    return d


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what, check, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def write_random(path, size):
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(left, 16 * MIB)
            f.write(os.urandom(n))
            left -= n


def median(xs):
    return statistics.median(xs)


def percentile(xs, p):
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


class Procs:
    """Child processes, all killed on exit (also on Ctrl-C)."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.procs = []

    def start(self, name, argv):
        log = open(self.workdir / f"{name}.log", "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def close(self):
        for p in self.procs:
            self.stop(p)


class Bench:
    """A work directory with nginx (the origin and the baseline) and a
    scheduler, torn down at the end."""

    def __init__(self):
        self.bins = bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="dffs-bench-", dir=os.environ.get("DFFS_BENCH_DIR", "/var/tmp")))
        self.dir.chmod(0o755)  # nginx workers run as another user
        self.procs = Procs(self.dir)
        self.origin_dir = self.dir / "origin"
        self.origin_dir.mkdir()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.procs.close()
        if getattr(self, "nginx_conf", None):
            subprocess.run(["nginx", "-c", str(self.nginx_conf), "-p", str(self.dir), "-s", "stop"],
                           stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start_nginx(self):
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            sys.exit("error: nginx is missing; apt-get install nginx-light")
        self.nginx_port = free_port()
        self.nginx_conf = self.dir / "nginx.conf"
        self.nginx_conf.write_text(f"""
worker_processes 1;
daemon on;
pid {self.dir}/nginx.pid;
error_log {self.dir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{self.nginx_port};
        root {self.origin_dir};
        autoindex on;  # rclone's http remote lists directories
    }}
}}
""")
        subprocess.run([nginx, "-c", str(self.nginx_conf), "-p", str(self.dir)], check=True)
        wait_until("nginx", lambda: port_open(self.nginx_port))

    def url(self, name):
        return f"http://127.0.0.1:{self.nginx_port}/{name}"

    def start_scheduler(self):
        self.scheduler_port = free_port()
        self.procs.start("scheduler", [self.bins / "scheduler", "--listen", f"127.0.0.1:{self.scheduler_port}",
                                       "--metrics-addr", f"127.0.0.1:{free_port()}", "--log-level", "warn"])
        wait_until("scheduler", lambda: port_open(self.scheduler_port))

    def start_peer(self, name, binary="peerd", extra=()):
        d = self.dir / name
        d.mkdir(exist_ok=True)
        sock = d / "peerd.sock"
        argv = [self.bins / binary, "--scheduler", f"127.0.0.1:{self.scheduler_port}", "--data-dir", d / "data",
                "--socket", sock, "--upload-addr", f"127.0.0.1:{free_port()}",
                "--metrics-addr", f"127.0.0.1:{free_port()}", "--log-level", "warn", *extra]
        proc = self.procs.start(name, [str(a) for a in argv])
        wait_until(f"{name} socket", lambda: sock.exists())
        return Peer(self, name, d, sock, proc)


class Peer:
    def __init__(self, bench, name, dir, socket, proc):
        self.bench, self.name, self.dir, self.socket, self.proc = bench, name, dir, socket, proc

    def dfget(self, url, out):
        t = time.perf_counter()
        r = subprocess.run([self.bench.bins / "dfget", url, "-O", out, "--socket", self.socket, "--quiet"],
                           capture_output=True)
        elapsed = time.perf_counter() - t
        if r.returncode != 0:
            raise RuntimeError(f"dfget failed: {r.stderr.decode()}")
        return elapsed

    def stop(self):
        self.bench.procs.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def timed(argv):
    t = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split(" ")[4] == str(path) for line in f)


def dffs_mount(bench, peer, name, extra=()):
    """Mounts dffs for `peer` in the foreground; returns (mountpoint, proc)."""
    mnt = bench.dir / name
    mnt.mkdir(exist_ok=True)
    proc = bench.procs.start(f"dffs-{name}", [str(bench.bins / "dffs"), "mount", str(mnt), "--socket", str(peer.socket),
                                             "-f", "--metrics-addr", os.environ.get("DFFS_METRICS_ADDR", "none"), *extra,
                                             *os.environ.get("DFFS_MOUNT_ARGS", "").split()])
    wait_until(f"dffs mount {name}", lambda: mounted(mnt))
    return mnt, proc


def umount(path):
    subprocess.run(["umount", "-l", str(path)], stderr=subprocess.DEVNULL)


def drop_caches():
    subprocess.run(["sync"])
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def dfget_id(bench, url):
    return subprocess.run([bench.bins / "dfget", "--id", url], capture_output=True, check=True, text=True).stdout.strip()
