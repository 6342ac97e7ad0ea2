#!/usr/bin/env bash
# Bulkhead quick start: build, install, start the daemon, install a guest
# kernel, build the minimal template, create qubes from it and run a command
# in work and personal — each a QEMU microVM (KVM if a test guest boots under
# it, else TCG software emulation; `bulkhead ls` shows which).
#
#   sudo ./scripts/quickstart.sh
#
# Idempotent: run it again and it keeps what exists. Environment overrides
# (used by CI to stay off the system paths): BULKHEAD_PREFIX (/usr/local),
# BULKHEAD_STATE_DIR (/var/lib/bulkhead), BULKHEAD_SOCKET
# (/run/bulkhead/qubesd.sock), BULKHEAD_POLICY_DIR (/etc/bulkhead/policy.d),
# BULKHEAD_NO_SERVICE=1 (start with --detach even where systemd runs),
# BULKHEAD_VIRT_MODE=ns (namespace sandboxes instead of VMs: for hosts
# without QEMU; weaker isolation).
set -euo pipefail

PREFIX=${BULKHEAD_PREFIX:-/usr/local}
STATE_DIR=${BULKHEAD_STATE_DIR:-/var/lib/bulkhead}
POLICY_DIR=${BULKHEAD_POLICY_DIR:-/etc/bulkhead/policy.d}
export BULKHEAD_SOCKET=${BULKHEAD_SOCKET:-/run/bulkhead/qubesd.sock}
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "quickstart: run as root (it installs to $PREFIX and starts bulkheadd)" >&2
    exit 1
fi
if ! command -v cargo >/dev/null; then
    # Under sudo, PATH loses the invoking user's rustup install: use it directly.
    home=$(getent passwd "${SUDO_USER:-root}" | cut -d: -f6)
    if [ -x "$home/.cargo/bin/cargo" ]; then
        export CARGO_HOME="$home/.cargo" RUSTUP_HOME="$home/.rustup" PATH="$home/.cargo/bin:$PATH"
    else
        echo "quickstart: Rust (cargo >= 1.87) is needed; install it with rustup, then re-run" >&2
        exit 1
    fi
fi

step "Installing system packages"
if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # busybox-static + e2fsprogs: the minimal template; util-linux: loop devices;
    # qemu-system-x86: the vm backend (the guest kernel comes from Debian's
    # linux-image-cloud-amd64, fetched by `bulkhead kernel install`).
    apt-get install -y -qq --no-install-recommends passwd util-linux busybox-static e2fsprogs \
        qemu-system-x86 >/dev/null
fi

step "Building (release)"
cargo build --release --locked --bins

step "Installing to $PREFIX"
install -d "$PREFIX/bin" "$PREFIX/share/doc/bulkhead"
install -m 0755 target/release/bulkheadd target/release/bulkhead \
    target/release/bulkhead-nsinit target/release/bulkhead-vmm target/release/bulkhead-agent \
    target/release/bulkhead-qrexec-relay "$PREFIX/bin/"
# The default qrexec policy (Qubes' 90-default equivalent); your own rules
# go in files that sort earlier (30-user.policy…).
install -D -m 0644 packaging/policy.d/90-default.policy "$POLICY_DIR/90-default.policy"
for t in qvm-ls qvm-create qvm-remove qvm-clone qvm-prefs qubes-prefs qvm-features qvm-tags \
         qvm-start qvm-shutdown qvm-kill qvm-pause qvm-unpause qvm-check qvm-run qvm-volume; do
    ln -sf bulkhead "$PREFIX/bin/$t"
done
install -m 0644 README.md "$PREFIX/share/doc/bulkhead/"

step "Starting bulkheadd"
if [ "${BULKHEAD_NO_SERVICE:-0}" != 1 ] && [ -d /run/systemd/system ] && [ "$PREFIX" = /usr/local ]; then
    install -m 0644 packaging/bulkheadd.service /etc/systemd/system/bulkheadd.service
    systemctl daemon-reload
    systemctl enable bulkheadd
    # Restart onto the new binaries; running qubes stay up and are re-adopted.
    systemctl restart bulkheadd
    for _ in $(seq 100); do [ -S "$BULKHEAD_SOCKET" ] && break; sleep 0.1; done
else
    pidfile="$(dirname "$BULKHEAD_SOCKET")/bulkheadd.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        # Restart onto the new binaries; running qubes stay up and are
        # re-adopted by the new daemon.
        echo "restarting the running bulkheadd (qubes keep running)"
        kill "$(cat "$pidfile")"
        for _ in $(seq 100); do kill -0 "$(cat "$pidfile" 2>/dev/null)" 2>/dev/null || break; sleep 0.1; done
    fi
    "$PREFIX/bin/bulkheadd" --state-dir "$STATE_DIR" --socket "$BULKHEAD_SOCKET" \
        --policy-dir "$POLICY_DIR" \
        --pidfile "$pidfile" \
        --log-file "${BULKHEAD_LOG_FILE:-/var/log/bulkheadd.log}" --detach
fi

B="$PREFIX/bin/bulkhead"
have() { "$B" ls --raw-list | grep -qx "$1"; }
mk() { local name=$1; shift; have "$name" || "$B" create "$@" "$name"; }

step "Building the minimal template (busybox + agent, no network needed)"
# Rebuilt from the installed agent on every run (the previous root stays as
# a revision); qubes based on it get the new root at their next start.
if "$B" check --running minimal >/dev/null 2>&1; then
    echo "minimal is running; not rebuilding it now"
else
    "$B" template build minimal
fi
"$B" global-prefs default_template minimal
VIRT_MODE=${BULKHEAD_VIRT_MODE:-vm}
"$B" global-prefs default_virt_mode "$VIRT_MODE"
if [ "$VIRT_MODE" = vm ]; then
    step "Installing the guest kernel (Debian's linux-image-cloud-amd64 + Bulkhead's initramfs)"
    # Re-installed on every run so the initramfs carries the installed agent.
    "$B" kernel install
    # The first vm start finds out whether KVM really works (a test guest
    # boots under it, or not within seconds: then TCG).
fi

step "Creating qubes"
mk sys-net -l red --prop provides_network=True
mk sys-firewall -l green --prop provides_network=True --prop netvm=sys-net
"$B" global-prefs default_netvm sys-firewall
mk work -l blue
mk personal -l yellow
mk banking -l green
mk vault -l black --prop netvm=
"$B" tags vault add offline >/dev/null

step "Running a command in work and personal (each starts on first use)"
for q in work personal; do
    "$B" run "$q" -- sh -c 'echo "hello from $(hostname): uid $(id -u), home $HOME, $(ls /home/user | wc -l) files"'
done

step "Your qubes"
"$B" ls
cat <<MSG

bulkheadd holds the qubes in $STATE_DIR and answers on $BULKHEAD_SOCKET.
Try: bulkhead run work -- sh, bulkhead volume list, bulkhead shutdown --all --wait,
     bulkhead policy explain work vault qubes.Filecopy (policy in $POLICY_DIR).
MSG
