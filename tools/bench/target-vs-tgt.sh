#!/usr/bin/env bash
# Benchmark: livemountd against tgt (Debian package tgt) serving the same image
# file, measured with libiscsi's iscsi-perf from the same client, alternating
# target by target for several rounds, on 127.0.0.1 only.
#
#   tools/bench/target-vs-tgt.sh [-r ROUNDS] [-s SECONDS] [-z IMAGE_MIB] [-d]
#     -d   O_DIRECT on both sides (livemountd direct=on, tgt bsoflags=direct);
#          default: both through the page cache (tgt's default rdwr backing store).
#
# Workloads: 4 KiB random reads at queue depth 32 and 1, 128 KiB sequential
# reads at queue depth 16. Prints per-round IOPS and the livemount/tgt ratio
# of the per-workload means. Goal (DESIGN.md): ratio >= 1.2 on each.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/bench/lib.sh
rounds=3; seconds=5; size=1024; direct=0
while getopts "r:s:z:d" opt; do
  case $opt in r) rounds=$OPTARG ;; s) seconds=$OPTARG ;; z) size=$OPTARG ;; d) direct=1 ;; *) exit 2 ;; esac
done
tools/install-deps.sh
swift build -c release --product livemountd >&2
bin="$(swift build -c release --show-bin-path)/livemountd"

work=$(mktemp -d /var/tmp/livemount-bench.XXXXXX)
ctl=$((20 + RANDOM % 100))
pids=()
cleanup() {
  tgtadm -C "$ctl" --op delete --mode system --force >/dev/null 2>&1 || true
  # tgtd ignores SIGTERM while it still has targets: stop it for sure.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "preparing a ${size} MiB image of random data" >&2
dd if=/dev/urandom of="$work/disk.img" bs=1M count="$size" status=none
iqn_t=iqn.2026-11.org.livemount:bench-tgt
iqn_l=iqn.2026-11.org.livemount:bench
port_t=$(free_port); port_l=$(free_port)

tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port_t" >"$work/tgtd.log" 2>&1 &
pids+=($!)
sleep 1
tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn_t"
if [ "$direct" = 1 ]; then
  tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/disk.img" --bsoflags direct
else
  tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/disk.img"
fi
tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL

lunopt=""; [ "$direct" = 1 ] || lunopt=",direct=off"
"$bin" --listen "127.0.0.1:$port_l" --target "$iqn_l" --lun "1=$work/disk.img$lunopt" --log-level warning \
  >"$work/livemountd.out" 2>"$work/livemountd.err" &
pids+=($!)
for _ in $(seq 1 100); do grep -q listening "$work/livemountd.out" 2>/dev/null && break; sleep 0.1; done

# Warm both paths (page cache) once.
cat "$work/disk.img" >/dev/null

compare_with_tgt "iscsi://127.0.0.1:$port_t/$iqn_t/1" "iscsi://127.0.0.1:$port_l/$iqn_l/1"
