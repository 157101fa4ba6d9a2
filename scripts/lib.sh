# Shared helpers for the scripts in this directory.

# Runs as root, re-executing through sudo when needed.
require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then
            exec sudo -E bash "$0" "$@"
        fi
        echo "error: $0 needs root (to install packages and mount FUSE); run it as root" >&2
        exit 1
    fi
}

# Installs the Debian packages named, only those missing.
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# Makes cargo available (rustup installs put it under ~/.cargo/bin).
ensure_cargo() {
    if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null; then
        echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
        exit 1
    fi
}

# Puts back /dev/null if something replaced it with a regular file (as a
# rename onto it would). Tools read and write it constantly, and as a file
# it feeds junk to every program whose input comes from it.
repair_dev_null() {
    if [ ! -c /dev/null ]; then
        echo "warning: /dev/null is not a device; recreating it" >&2
        rm -f /dev/null.dffs-new
        mknod -m 666 /dev/null.dffs-new c 1 3
        mv -f /dev/null.dffs-new /dev/null
    fi
}
