#!/usr/bin/env bash
# Benchmark (issue 4, acceptance 2): a boot trace replayed against a live mount on slow backup storage,
#   (a) cold, no prefetch   (b) cold, with a plan trained on OTHER boots of the same image   (c) fully cached,
# on 127.0.0.1 only.
#
#   tools/bench/prefetch-replay.sh [-l LATENCY_MS] [-t TRACES] [-i IMAGE] [-r REPLAY_TRACE]
#
# TRACES: a directory of boot traces (CSV, `livemount trace export` format) of one image, recorded by
# tools/boot/record-traces.sh; default Tests/PrefetchTests/Traces. The last one (by name) is replayed, or -r
# names it; all the others train the plan. IMAGE: the disk the traces were recorded on (default: a disk of
# random data as large as the traces' highest LBA, so every chunk they touch holds data and must be fetched;
# what is read does not change the timing, only which chunks are zero would).
#
# Each run starts livemountd with a fresh cache and LATENCY_MS (default 10) injected per chunk read, and
# replays the trace with `livemount trace replay --json` (its order, concurrency and think time). Prints total
# time, stall time (total minus the trace's own think time), and for (b) the prefetcher's precision, recall and
# pre-stage figures. Goals: stall(b) <= stall(a) / 4, total(b) <= 1.15 x total(c), precision >= 0.8,
# recall >= 0.9.
set -euo pipefail
cd "$(dirname "$0")/../.."
latency=10; traces=Tests/PrefetchTests/Traces; image=""; replay=""
while getopts "l:t:i:r:" opt; do
  case $opt in l) latency=$OPTARG ;; t) traces=$OPTARG ;; i) image=$OPTARG ;; r) replay=$OPTARG ;; *) exit 2 ;; esac
done
tools/install-deps.sh
swift build -c release --product livemountd >&2
swift build -c release --product livemount >&2
bindir="$(swift build -c release --show-bin-path)"
lm="$bindir/livemount"

mapfile -t files < <(ls "$traces"/*.csv 2>/dev/null | sort)
[ "${#files[@]}" -ge 2 ] || { echo "need at least 2 traces in $traces (one to replay, others to train)" >&2; exit 1; }
[ -n "$replay" ] || replay=${files[-1]}
train=(); for f in "${files[@]}"; do [ "$f" = "$replay" ] || train+=("$f"); done

work=$(mktemp -d /var/tmp/livemount-prefetch-bench.XXXXXX)
daemon=""
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
. tools/bench/lib.sh  # free_port

# The disk: the given image, or random data covering every block the traces read.
if [ -z "$image" ]; then
  bytes=$(python3 - "${files[@]}" <<'PY'
import sys
top, bs = 0, 512
for path in sys.argv[1:]:
    for line in open(path):
        if line.startswith("# block_size="): bs = int(line.split("=", 1)[1])
        if not line[:1].isdigit(): continue
        f = line.split(",")
        top = max(top, (int(f[2]) + int(f[3])) * bs)
print(max(64 << 20, (top + (1 << 20) - 1) >> 20 << 20))
PY
)
  echo "making a $((bytes >> 20)) MiB disk of random data for the traces" >&2
  head -c "$bytes" /dev/urandom >"$work/disk.img"
  image="$work/disk.img"
fi
size_mib=$(( ($(stat -c %s "$image") + (1 << 20) - 1) >> 20 ))
echo 'name = "bootbench"' >"$work/vm.conf"
"$lm" backup create --repo "$work/repo" --vm bootbench --config "$work/vm.conf" --disk "disk0=$image" >&2

# Train the plan on the other boots, in the store the daemon will use.
db="$work/state/traces.sqlite"
mkdir -p "$work/state"
ids=()
for f in "${train[@]}"; do
  ids+=("$("$lm" trace import "$f" --profile bootbench --traces-db "$db" | sed -n 's/^imported trace \([0-9]*\):.*/\1/p')")
done
"$lm" trace train bootbench --traces "$(IFS=,; echo "${ids[*]}")" --traces-db "$db" >&2
"$lm" trace plan bootbench --limit 5 --traces-db "$db" >&2

iqn=iqn.2026-11.org.livemount:bootbench
start_daemon() { # extra --lun options
  rm -f "$work/cache.img" "$work/cache.img.index"* "$work/d.out"
  rm -rf "$work/state/mounts"
  port=$(free_port)
  "$bindir/livemountd" --listen "127.0.0.1:$port" --target "$iqn" --repo "$work/repo" \
    --cache "$work/cache.img,$((size_mib * 2 + 64))M" --state-dir "$work/state" --repo-latency "$latency" \
    --lun "0=backup:bootbench$1" --log-level warning >"$work/d.out" 2>"$work/d.err" &
  daemon=$!
  for _ in $(seq 1 600); do grep -q listening "$work/d.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/d.out" || { cat "$work/d.err"; exit 1; }
}
stop_daemon() { kill "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""; }
replay_json() { "$lm" trace replay "$replay" --url "iscsi://127.0.0.1:$port/$iqn/0" --json; }

echo "replaying $(basename "$replay"), plan trained on ${#train[@]} other boot(s), ${latency} ms per chunk read" >&2
start_daemon ",prefetch=off"; a=$(replay_json); stop_daemon
started=$(date +%s.%N)
start_daemon ""; ready=$(date +%s.%N)
b=$(replay_json)
bstat=$("$lm" mount status --target "$iqn" --lun 0 --json --socket "$work/state/control.sock"); stop_daemon
start_daemon ",prefetch=off"; replay_json >/dev/null; c=$(replay_json); stop_daemon

python3 - "$a" "$b" "$c" "$bstat" "$(python3 -c "print($ready - $started)")" <<'PY'
import json, sys
a, b, c, st = (json.loads(x) for x in sys.argv[1:5])
startup = float(sys.argv[5])
p = st.get("prefetch") or {}
print(f"{'run':34} {'total s':>9} {'stall s':>9} {'p50 ms':>8} {'p99 ms':>8}")
for name, r in (("(a) cold, no prefetch", a), ("(b) cold, trained plan", b), ("(c) fully cached", c)):
    print(f"{name:34} {r['totalSeconds']:9.2f} {r['stallSeconds']:9.2f} {r['latency']['p50']/1000:8.2f} {r['latency']['p99']/1000:8.2f}")
print(f"trace: {a['reads']} reads, {a['bytes']/1048576:.1f} MiB, own think time {a['traceThinkSeconds']:.2f} s, "
      f"own stall {a['traceStallSeconds']:.2f} s, concurrency up to {a['traceMaxConcurrency']}")
ratio_stall = b['stallSeconds'] / a['stallSeconds'] if a['stallSeconds'] > 0 else float('nan')
ratio_total = b['totalSeconds'] / c['totalSeconds'] if c['totalSeconds'] > 0 else float('nan')
print(f"stall(b)/stall(a) = {ratio_stall:.3f}  (goal <= 0.25)")
print(f"total(b)/total(c) = {ratio_total:.3f}  (goal <= 1.15)")
print(f"precision {p.get('precision', 0):.3f} (goal >= 0.8)  recall {p.get('recall', 0):.3f} (goal >= 0.9)")
print(f"pre-staged {p.get('prestagedBytes', 0)/1048576:.1f} MiB in {p.get('prestageSeconds', 0):.2f} s "
      f"(daemon start to listening {startup:.2f} s); staged {p.get('stagedBytes', 0)/1048576:.1f} MiB, "
      f"used {p.get('usedBytes', 0)/1048576:.1f} MiB; plan {p.get('planEntries', 0)} extents, "
      f"{p.get('planBytes', 0)/1048576:.1f} MiB; lead time median {p.get('leadTimeMedian', 0):.2f} s")
errors = a['errors'] + b['errors'] + c['errors']
if errors: print(f"{errors} read errors"); sys.exit(1)
PY
