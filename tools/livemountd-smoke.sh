#!/bin/bash
# Smoke test of the livemountd command line: --check, exit codes and messages, the listening line,
# graceful shutdown on SIGTERM. Uses only 127.0.0.1. Usage: tools/livemountd-smoke.sh [path/to/livemountd]
set -u
cd "$(dirname "$0")/.."
BIN=${1:-.build/debug/livemountd}
WORK=$(mktemp -d /var/tmp/livemountd-smoke.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
IMG=$WORK/disk0.img
truncate -s 64M "$IMG"
failures=0

# expect NAME STATUS PATTERN COMMAND...: runs COMMAND, checks its exit status and that its output matches PATTERN.
expect() {
    local name=$1 status=$2 pattern=$3
    shift 3
    local out rc
    out=$("$@" 2>&1)
    rc=$?
    if [[ $rc -ne $status ]] || ! grep -qE -- "$pattern" <<<"$out"; then
        echo "FAIL $name: status $rc (want $status), output:"
        sed 's/^/    /' <<<"$out"
        failures=$((failures + 1))
    else
        echo "ok   $name"
    fi
}

expect "help" 0 "--config" "$BIN" --help
sed -e "s#/var/tmp/livemount/disk0.img#$IMG#" -e "s#/var/tmp/livemount/state#$WORK/state#" conf/livemount.toml >"$WORK/c.toml"
expect "check shipped config" 0 "configuration OK: 127.0.0.1:3260 \(target iqn.2026-11.org.example:disk0, 1 LUN\)" \
    "$BIN" --check --config "$WORK/c.toml"
expect "check ad hoc" 0 "configuration OK" \
    "$BIN" --check --listen 127.0.0.1:0 --target iqn.2026-11.org.example:disk0 --lun "0=$IMG"
expect "missing file" 1 "--lun 1=/nonexistent.img: file /nonexistent.img does not exist" \
    "$BIN" --check --target iqn.2026-11.org.example:disk0 --lun 1=/nonexistent.img
expect "bad port" 1 "--listen 127.0.0.1:70000: port 70000 out of range" \
    "$BIN" --check --listen 127.0.0.1:70000 --target iqn.2026-11.org.example:disk0 --lun "0=$IMG"
expect "usage error exits 1" 1 "Unknown option" "$BIN" --bogus
printf '[[targets]]\nnmae = "x"\n' >"$WORK/bad.toml"
expect "unknown key" 1 "bad.toml:2:1: targets\[0\].nmae: unknown key \(did you mean name\?\)" \
    "$BIN" --check --config "$WORK/bad.toml"
expect "config plus ad hoc" 1 "cannot be combined with --lun" "$BIN" --config "$WORK/c.toml" --lun "0=$IMG"

# Serve on an ephemeral port, read the one stdout line, stop with SIGTERM.
"$BIN" --listen 127.0.0.1:0 --target iqn.2026-11.org.example:disk0 --lun "0=$IMG" >"$WORK/out" 2>"$WORK/err" &
pid=$!
for _ in $(seq 50); do [[ -s $WORK/out ]] && break; kill -0 $pid 2>/dev/null || break; sleep 0.1; done
if grep -qE "^livemountd: listening on 127\.0\.0\.1:[0-9]+ \(target iqn.2026-11.org.example:disk0, 1 LUN\)$" "$WORK/out" \
    && [[ $(wc -l <"$WORK/out") -eq 1 ]]; then
    echo "ok   listening line"
    kill -TERM $pid 2>/dev/null
    wait $pid
    rc=$?
    if [[ $rc -eq 0 ]]; then echo "ok   SIGTERM exits 0"; else echo "FAIL SIGTERM: status $rc"; failures=$((failures + 1)); fi
else
    kill -TERM $pid 2>/dev/null
    wait $pid
    echo "FAIL listening line (status $?): stdout:"; sed 's/^/    /' "$WORK/out"; echo "  stderr:"; sed 's/^/    /' "$WORK/err"
    failures=$((failures + 1))
fi

echo "smoke: $failures failure(s)"
[[ $failures -eq 0 ]]
