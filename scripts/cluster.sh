#!/usr/bin/env bash
# An all-in-one dffs cluster on this host: a scheduler, a seed and a peerd
# with their default flags, dffs mounted at /dfly, and a small demo origin
# to try it on.
#
#   scripts/cluster.sh [up]    build, install to /usr/local/bin, start
#   scripts/cluster.sh down    stop everything
#   scripts/cluster.sh status  show what runs
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
require_root "$@"
repair_dev_null

PREFIX=${DFFS_PREFIX:-/usr/local/bin}
LOGS=/var/log/dffs
RUN=/run/dffs
DEMO=/var/lib/dffs/demo
DEMO_ADDR=127.0.0.1:8000
MOUNTPOINT=/dfly

start() { # name command...
    local name=$1; shift
    nohup "$@" >"$LOGS/$name.log" 2>&1 &
    echo $! >"$RUN/$name.pid"
}

wait_for() { # description test-command...
    local what=$1; shift
    for _ in $(seq 1 100); do
        if "$@" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "error: $what did not come up; see $LOGS" >&2
    exit 1
}

down() {
    if mountpoint -q "$MOUNTPOINT" 2>/dev/null; then
        umount "$MOUNTPOINT" 2>/dev/null || umount -l "$MOUNTPOINT"
    fi
    for name in peerd seed scheduler demo-origin; do
        if [ -f "$RUN/$name.pid" ]; then
            kill "$(cat "$RUN/$name.pid")" 2>/dev/null || true
            rm -f "$RUN/$name.pid"
        fi
    done
    sleep 0.5
}

status() {
    for name in scheduler seed peerd demo-origin; do
        if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
            echo "$name: running (pid $(cat "$RUN/$name.pid"), log $LOGS/$name.log)"
        else
            echo "$name: stopped"
        fi
    done
    if mountpoint -q "$MOUNTPOINT" 2>/dev/null; then
        echo "dffs: mounted at $MOUNTPOINT"
    else
        echo "dffs: not mounted"
    fi
}

up() {
    ensure_cargo
    apt_install fuse3 curl
    echo "== building (release)"
    cargo build --release --workspace --bins
    install -m 0755 target/release/{scheduler,seed,peerd,dfget,dffs} "$PREFIX/"
    # mount(8) runs /sbin/mount.TYPE for `mount -t dffs`.
    ln -sf "$PREFIX/dffs" /sbin/mount.dffs
    install -m 0755 target/release/dffs-test-origin "$PREFIX/dffs-demo-origin"
    mkdir -p "$LOGS" "$RUN" "$DEMO"
    down
    echo "== starting"
    start scheduler "$PREFIX/scheduler"
    wait_for "scheduler" bash -c 'exec 3<>/dev/tcp/127.0.0.1/8002'
    start seed "$PREFIX/seed"
    start peerd "$PREFIX/peerd"
    wait_for "seed" test -S "$RUN/seed.sock"
    wait_for "peerd" test -S "$RUN/peerd.sock"
    if [ ! -f "$DEMO/sample.bin" ]; then
        head -c $((64 << 20)) /dev/urandom >"$DEMO/sample.bin"
    fi
    start demo-origin "$PREFIX/dffs-demo-origin" --root "$DEMO" --listen "$DEMO_ADDR"
    wait_for "demo origin" bash -c "exec 3<>/dev/tcp/${DEMO_ADDR%:*}/${DEMO_ADDR#*:}"
    mkdir -p "$MOUNTPOINT"
    mount -t dffs dffs "$MOUNTPOINT" -o "socket=$RUN/peerd.sock,log_file=$LOGS/dffs.log"
    local id
    id=$("$PREFIX/dffs" add "http://$DEMO_ADDR/sample.bin")
    cat <<MSG

dffs is running on this host (logs in $LOGS):
  scheduler  0.0.0.0:8002             metrics http://127.0.0.1:8003/metrics
  seed       upload 0.0.0.0:65006     metrics http://127.0.0.1:65007/metrics
  peerd      socket $RUN/peerd.sock   metrics http://127.0.0.1:65003/metrics
  dffs       mounted at $MOUNTPOINT         metrics http://127.0.0.1:65009/metrics
  demo origin http://$DEMO_ADDR/sample.bin (64 MiB of random bytes)

Try it:
  dfget http://$DEMO_ADDR/sample.bin -O /tmp/sample.bin     # eager download
  cp $MOUNTPOINT/$id /tmp/lazy.bin                  # lazy read through dffs
  sha256sum /tmp/sample.bin /tmp/lazy.bin $DEMO/sample.bin

A URL becomes readable under $MOUNTPOINT on every host once registered:
  dffs add URL        # prints the task-id, downloads nothing

Other hosts join with: peerd --scheduler THIS_HOST:8002
Stop with: scripts/cluster.sh down
MSG
}

case "${1:-up}" in
    up) up ;;
    down) down; echo "stopped" ;;
    status) status ;;
    *) echo "usage: $0 [up|down|status]" >&2; exit 2 ;;
esac
