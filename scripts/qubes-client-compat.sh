#!/usr/bin/env bash
# Runs Qubes' own admin client tools (qvm-ls, qvm-prefs, qvm-create, ...)
# against a throwaway bulkheadd, to check wire compatibility with the real
# client library rather than with our reading of it.
#
#   scripts/qubes-client-compat.sh /path/to/qubes-core-admin-client
#
# The client is not vendored: point this at your own checkout of
# QubesOS/qubes-core-admin-client. Needs python3 and a built bulkheadd
# (cargo build --release).
set -euo pipefail
QAC=${1:?usage: $0 /path/to/qubes-core-admin-client}
cd "$(dirname "$0")/.."
DAEMON=target/release/bulkheadd
[ -x "$DAEMON" ] || { echo "build first: cargo build --release" >&2; exit 1; }
T=$(mktemp -d)
trap 'kill "$(cat "$T/pid" 2>/dev/null)" 2>/dev/null || true; rm -rf "$T"' EXIT
"$DAEMON" --state-dir "$T/state" --socket "$T/qubesd.sock" --group "$(id -gn)" \
    --pidfile "$T/pid" --log-file "$T/log" --detach >/dev/null

# A tiny launcher: point the client library at our socket and run one tool.
cat > "$T/run.py" <<'PY'
import importlib, importlib.metadata, sys
_orig = importlib.metadata.metadata
class _Meta(dict):
    def __missing__(self, key):
        return "qubesadmin"
importlib.metadata.metadata = lambda n: _Meta(Version="0") if n == "qubesadmin" else _orig(n)
sys.path.insert(0, sys.argv[1])
import qubesadmin, qubesadmin.app, qubesadmin.config
qubesadmin.config.QUBESD_SOCKET = sys.argv[2]
qubesadmin.Qubes = qubesadmin.app.QubesLocal
tool = importlib.import_module("qubesadmin.tools." + sys.argv[3].replace("-", "_"))
sys.exit(tool.main(sys.argv[4:]))
PY
q() { python3 "$T/run.py" "$QAC" "$T/qubesd.sock" "$@"; }
expect() { # expect "WANT" cmd...
    local want=$1; shift
    local got; got=$(q "$@" 2>&1)
    if [ "$got" != "$want" ]; then
        printf 'FAIL: %s\n  want: %q\n  got:  %q\n' "$*" "$want" "$got"; exit 1
    fi
    printf 'ok: %s\n' "$*"
}

q qvm-create --class TemplateVM -l black fedora
q qubes-prefs default_template fedora
q qvm-create -l red work
q qvm-create -l green --prop memory=600 -t fedora personal
expect "$(printf 'dom0\nfedora\npersonal\nwork')" qvm-ls --raw-list
q qvm-ls | grep -Eq '^work +Halted +AppVM +red +fedora +- *$' && echo "ok: qvm-ls row"
expect 600 qvm-prefs personal memory
q qvm-prefs work memory 900
expect 900 qvm-prefs work memory
q qvm-prefs --default work memory
expect 400 qvm-prefs work memory
q qvm-features work service.x 1
expect 1 qvm-features work service.x
expect "$(printf 'created-by-dom0')" qvm-tags work
q qvm-tags work add office
expect "$(printf 'created-by-dom0\noffice')" qvm-tags work list
expect "qvm-check: work: exists" qvm-check work
if q qvm-prefs work nosuch >/dev/null 2>&1; then echo "FAIL: nosuch property accepted"; exit 1; fi
echo "ok: unknown property refused"
q qvm-remove -f personal
expect "$(printf 'dom0\nfedora\nwork')" qvm-ls --raw-list
echo "all Qubes client checks passed"
