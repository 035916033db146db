#!/usr/bin/env bash
# Starts livemountd on 127.0.0.1 with a free port, serving a writable scratch
# LUN 0 and a read-only LUN 1, runs ../shared/conformance/iscsi-conformance
# against LUN 0 (two paths, for MultipathIO) and the ReadOnly tests against
# LUN 1, stops the daemon, and fails on any FAIL.
# With -l, LUN 0 is instead a writable live mount of a backup (a 256 MiB disk
# with data and zero chunks, ingested into a scratch repository), LUN 1 a
# read-only live mount of the same backup.
#   tools/conformance.sh [-l] [-f FILTER] [-o results.tsv]
set -euo pipefail
cd "$(dirname "$0")/.."
filter='.'; out=""; live=""
while getopts "lf:o:" opt; do
  case $opt in l) live=1 ;; f) filter=$OPTARG ;; o) out=$OPTARG ;; *) exit 2 ;; esac
done
suite=${LIVEMOUNT_CONFORMANCE:-../shared/conformance/iscsi-conformance}
[ -x "$suite" ] || { echo "conformance suite not found at $suite" >&2; exit 2; }

swift build -c release --product livemountd >&2
swift build -c release --product livemount >&2
bin="$(swift build -c release --show-bin-path)/livemountd"
tool="$(swift build -c release --show-bin-path)/livemount"
work=$(mktemp -d /var/tmp/livemount-conformance.XXXXXX)
daemon=""
cleanup() { [ -n "$daemon" ] && kill "$daemon" 2>/dev/null && wait "$daemon" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
truncate -s 256M "$work/rw.img"
truncate -s 64M "$work/ro.img"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
iqn=iqn.2026-11.org.livemount:conformance
if [ -n "$live" ]; then
  # 256 MiB: 24 MiB of random data, a repeated 8 MiB block, the rest zero chunks.
  head -c 24M /dev/urandom >"$work/disk.img"
  head -c 8M /dev/urandom >"$work/block"
  cat "$work/block" "$work/block" >>"$work/disk.img"
  truncate -s 256M "$work/disk.img"
  echo "name = conformance" >"$work/vm.conf"
  "$tool" backup create --repo "$work/repo" --vm conformance --config "$work/vm.conf" --disk "disk0=$work/disk.img" \
    >"$work/ingest.out" 2>&1 || { cat "$work/ingest.out"; exit 1; }
  luns=(--repo "$work/repo" --cache "$work/cache.img,128M" --lun "0=backup:conformance" --lun "1=backup:conformance,ro")
else
  luns=(--lun "0=$work/rw.img" --lun "1=$work/ro.img,ro")
fi
"$bin" --listen "127.0.0.1:$port" --target "$iqn" "${luns[@]}" \
  --state-dir "$work/state" --log-level warning >"$work/daemon.out" 2>"$work/daemon.err" &
daemon=$!
for _ in $(seq 1 100); do grep -q listening "$work/daemon.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/daemon.out" || { echo "livemountd did not start:"; cat "$work/daemon.err"; exit 1; }

url="iscsi://127.0.0.1:$port/$iqn"
rc=0
"$suite" -f "$filter" ${out:+-o "$out"} "$url/0" "$url/0" | tee "$work/rw.log" || rc=1
echo "== read-only LUN"
"$suite" -f '^SCSI\.ReadOnly' "$url/1" | tee "$work/ro.log" || rc=1
kill -0 "$daemon" 2>/dev/null || { echo "livemountd died during the suite:"; tail -20 "$work/daemon.err"; rc=1; }
# A FAIL fails the run unless the test is on the documented known-broken list.
known=$(grep -v '^#' tools/conformance-known-broken.txt | cut -f1)
while read -r line; do
  name=${line#FAIL }; name=${name%%:*}
  if grep -qxF "$name" <<<"$known"; then echo "known-broken (see tools/conformance-known-broken.txt): $name"
  else rc=1; fi
done < <(grep -h '^FAIL' "$work/rw.log" "$work/ro.log")
if grep -q ' 0 passed' "$work/ro.log"; then echo "ReadOnly tests did not pass on the read-only LUN"; rc=1; fi
tail -1 "$work/rw.log"
exit $rc
