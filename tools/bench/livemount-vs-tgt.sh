#!/usr/bin/env bash
# Benchmark (issue 3, acceptance 6): a live mount of a backup against tgt
# serving the raw image, on 127.0.0.1 only.
#
#   tools/bench/livemount-vs-tgt.sh [-r ROUNDS] [-s SECONDS] [-z IMAGE_MIB] [-l LATENCY_MS]
#
# 1. Warm cache: the image (random data) is backed up into a scratch
#    repository and live-mounted by livemountd with an SSD-tier cache larger
#    than the disk; the LUN is read once so every chunk is cached; then
#    iscsi-perf (libiscsi) runs 4 KiB random reads at QD32 and QD1 and 128 KiB
#    sequential reads at QD16 against the live mount and against tgt serving
#    the raw image (its default rdwr backing store, page cache), alternating
#    round by round. Prints IOPS and the livemount/tgt ratio. Goal: >= 1.0.
# 2. Cold full reads: the daemon restarts with a fresh cache, first with no
#    injected latency (the bandwidth bound), then with LATENCY_MS
#    (default 10) injected per chunk read; `livemount lun read` reads the whole
#    LUN sequentially, 1 MiB per command (timed), then again from the cache
#    with its SHA-256 checked against the image's. Prints the rate, the chunk fetch count and the bound a
#    strictly serial fetcher would reach (chunk size / latency): the ratio
#    shows the fetch parallelism (readahead) achieved.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tools/bench/lib.sh
rounds=3; seconds=5; size=1024; latency=10
while getopts "r:s:z:l:" opt; do
  case $opt in r) rounds=$OPTARG ;; s) seconds=$OPTARG ;; z) size=$OPTARG ;; l) latency=$OPTARG ;; *) exit 2 ;; esac
done
tools/install-deps.sh
swift build -c release --product livemountd >&2
swift build -c release --product livemount >&2
bindir="$(swift build -c release --show-bin-path)"

work=$(mktemp -d /var/tmp/livemount-bench.XXXXXX)
ctl=$((20 + RANDOM % 100))
pids=(); daemon=""
cleanup() {
  tgtadm -C "$ctl" --op delete --mode system --force >/dev/null 2>&1 || true
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "preparing a ${size} MiB image of random data and backing it up" >&2
dd if=/dev/urandom of="$work/disk.img" bs=1M count="$size" status=none
echo 'name = "bench"' >"$work/bench.conf"
"$bindir/livemount" backup create --repo "$work/repo" --vm bench --config "$work/bench.conf" \
  --disk "disk0=$work/disk.img" >&2
image_sha=$(sha256sum "$work/disk.img" | cut -d' ' -f1)

iqn_t=iqn.2026-11.org.livemount:bench-tgt
iqn_l=iqn.2026-11.org.livemount:bench
port_t=$(free_port); port_l=$(free_port)
tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$port_t" >"$work/tgtd.log" 2>&1 &
pids+=($!)
sleep 1
tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn_t"
tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$work/disk.img"
tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL

start_daemon() { # extra livemountd arguments
  rm -f "$work/livemountd.out"
  "$bindir/livemountd" --listen "127.0.0.1:$port_l" --target "$iqn_l" --repo "$work/repo" \
    --cache "$work/cache.img,$((size * 2))M" --state-dir "$work/state" --lun "1=backup:bench" \
    --log-level warning "$@" >"$work/livemountd.out" 2>"$work/livemountd.err" &
  daemon=$!
  for _ in $(seq 1 100); do grep -q listening "$work/livemountd.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/livemountd.out" || { cat "$work/livemountd.err"; exit 1; }
}
stop_daemon() { kill "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""; }
cache_stats() { "$bindir/livemount" status --json --socket "$work/state/control.sock"; }

# ---- 1. warm cache
start_daemon
echo "warming (and checking): $("$bindir/livemount" lun read "iscsi://127.0.0.1:$port_l/$iqn_l/1")" >&2
cat "$work/disk.img" >/dev/null   # tgt's page cache, likewise

echo "== warm cache: live mount vs tgt on the raw image (iscsi-perf, ${seconds}s x ${rounds} rounds)"
compare_with_tgt "iscsi://127.0.0.1:$port_t/$iqn_t/1" "iscsi://127.0.0.1:$port_l/$iqn_l/1"
echo "cache after the warm runs: $(cache_stats | python3 -c 'import json,sys; c=json.load(sys.stdin)["cache"]; print("hits %d misses %d fetches %d" % (c["hits"], c["misses"], c["fetches"]))')"
stop_daemon

# ---- 2. cold full reads: without injected latency (what the CPU and disks allow), then with it
declare -A cold
for lat in 0 "$latency"; do
  rm -f "$work/cache.img" "$work/cache.img.index"*
  rm -rf "$work/state"
  start_daemon --repo-latency "$lat"
  # Timed without SHA-256 (the client's hashing, without SHA-NI, would be the bottleneck), then read again
  # (now from the cache) with it, to check the bytes.
  line=$("$bindir/livemount" lun read --no-sha256 "iscsi://127.0.0.1:$port_l/$iqn_l/1")
  stats=$(cache_stats)
  sha=$("$bindir/livemount" lun read "iscsi://127.0.0.1:$port_l/$iqn_l/1" | awk '{print $NF}')
  stop_daemon
  cold[$lat]="${line% sha256 *} sha256 $sha"
  cold[$lat.stats]="$stats"
done
echo
echo "== cold full reads (fresh cache, 1 MiB reads, one session)"
python3 - "${cold[0]}" "${cold[$latency]}" "${cold[$latency.stats]}" "$image_sha" "$latency" <<'PY'
import json, re, sys
base, slow, stats, image_sha, latency = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4], float(sys.argv[5])
def parse(line):
    m = re.search(r"(\d+) bytes in ([\d.]+) s \(([\d.]+) MiB/s\) sha256 (\w+)", line)
    return float(m.group(3)), m.group(4)
rate0, sha0 = parse(base)
rate, sha = parse(slow)
c = stats["cache"]
serial = 1000.0 / latency          # MiB/s of one 1 MiB chunk fetch at a time
inflight = rate * latency / 1000.0 # Little's law: chunk fetches in flight on average
print(f"no injected latency : {rate0:7.1f} MiB/s (the bandwidth bound here: CPU for decompression, checks, copies)")
print(f"{latency:.0f} ms per chunk read : {rate:7.1f} MiB/s = {rate / rate0:.2f} of the bandwidth bound")
print(f"  a one-at-a-time fetcher would reach {serial:.0f} MiB/s; average fetches in flight {inflight:.1f}")
print(f"  chunk fetches {c['fetches']} ({c['bytesFetched'] / 1048576:.0f} MiB from the repository)")
print(f"sha256 of both reads matches the image: {sha0 == image_sha and sha == image_sha}")
if sha0 != image_sha or sha != image_sha: sys.exit(1)
PY
