#!/usr/bin/env bash
# Benchmark (issue 4, acceptance 2): a boot trace replayed against a live mount on slow backup storage,
#   (a) cold, no prefetch   (b) cold, with a plan trained on OTHER boots of the same image   (c) fully cached,
# on 127.0.0.1 only.
#
#   tools/bench/prefetch-replay.sh [-l LATENCY_MS] [-t TRACES] [-i IMAGE] [-r REPLAY_TRACE] [-n ROUNDS]
#                                  [-p POLL_US] [-b] [-c CPUS] [-B BINDIR] [-P]
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
# recall >= 0.9. The stall is the issue's: the replay's total minus the trace's own think time. The replay's
# own lateness (how long after the schedule allowed it each read was sent, summed) is part of it and is
# printed beside it, so that a slow harness is not mistaken for slow storage.
#
# ROUNDS (default 1): (a), (b), (c) are run that many times, in turn; each round is printed and the ratios'
# medians are given. POLL_US (default 200): `trace replay --poll-us`, how long each read polls for its answer
# before sleeping, as QEMU's event loop does (0: sleep at once). -b: the replay spends think time spinning
# (`--busy-think`), as the recorded guest's vCPU did (QEMU software emulation computes through it), instead of
# sleeping until the last 100 µs. CPUS: pin the daemon and the replay to these
# CPUs (taskset list). BINDIR: use the livemountd and livemount found there instead of building (a build of
# another commit, for a before/after comparison in one session).
set -euo pipefail
cd "$(dirname "$0")/../.."
latency=10; traces=Tests/PrefetchTests/Traces; image=""; replay=""; rounds=1; poll=200; cpus=""; bindir=""
busy=0; peer=1
while getopts "l:t:i:r:n:p:c:B:bP" opt; do
  case $opt in
    l) latency=$OPTARG ;; t) traces=$OPTARG ;; i) image=$OPTARG ;; r) replay=$OPTARG ;; n) rounds=$OPTARG ;;
    p) poll=$OPTARG ;; c) cpus=$OPTARG ;; B) bindir=$OPTARG ;; b) busy=1 ;; P) peer=0 ;; *) exit 2 ;;
  esac
done
. tools/bench/lib.sh  # free_port, release_binaries
release_binaries
pin=(); [ -z "$cpus" ] || pin=(taskset -c "$cpus")
# A livemount from before --poll-us and --busy-think existed (-B) is run without them.
poll_args=(); "$lm" trace replay --help | grep -q -- --poll-us && poll_args=(--poll-us "$poll")
[ "$busy" = 1 ] && "$lm" trace replay --help | grep -q -- --busy-think && poll_args+=(--busy-think)

mapfile -t files < <(ls "$traces"/*.csv 2>/dev/null | sort)
[ "${#files[@]}" -ge 2 ] || { echo "need at least 2 traces in $traces (one to replay, others to train)" >&2; exit 1; }
[ -n "$replay" ] || replay=${files[-1]}
train=(); for f in "${files[@]}"; do [ "$f" = "$replay" ] || train+=("$f"); done

work=$(mktemp -d /var/tmp/livemount-prefetch-bench.XXXXXX)
daemon=""; tgt=""; ctl=$((20 + RANDOM % 100))
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  if [ -n "$tgt" ]; then
    # tgtd ignores SIGTERM while it still has targets.
    tgtadm -C "$ctl" --op delete --mode system --force >/dev/null 2>&1 || true
    kill "$tgt" 2>/dev/null || true; sleep 0.5; kill -KILL "$tgt" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

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
  "${pin[@]}" "$bindir/livemountd" --listen "127.0.0.1:$port" --target "$iqn" --repo "$work/repo" \
    --cache "$work/cache.img,$((size_mib * 2 + 64))M" --state-dir "$work/state" --repo-latency "$latency" \
    --lun "0=backup:bootbench$1" --log-level warning >"$work/d.out" 2>"$work/d.err" &
  daemon=$!
  for _ in $(seq 1 600); do grep -q listening "$work/d.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/d.out" || { cat "$work/d.err"; exit 1; }
}
stop_daemon() { kill "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""; }
replay_json() { "${pin[@]}" "$lm" trace replay "$replay" --url "iscsi://127.0.0.1:$port/$iqn/0" --json "${poll_args[@]}" "$@"; }

# (d): tgt, the peer, serving the raw image from the page cache, pinned as the daemon is.
if [ "$peer" = 1 ]; then
  command -v tgtd >/dev/null || { echo "tgtd not found (apt install tgt), or -P to skip the floor" >&2; exit 1; }
  tport=$(free_port); tiqn=iqn.2026-11.org.livemount:bootbench-tgt
  "${pin[@]}" tgtd -f -C "$ctl" --iscsi "portal=127.0.0.1:$tport" >"$work/tgtd.log" 2>&1 &
  tgt=$!
  for _ in $(seq 1 50); do tgtadm -C "$ctl" --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
  tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$tiqn"
  tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$image"
  tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL
  cat "$image" >/dev/null
fi
peer_json() {
  [ "$peer" = 1 ] || { echo null; return; }
  "${pin[@]}" "$lm" trace replay "$replay" --url "iscsi://127.0.0.1:$tport/$tiqn/1" --json "${poll_args[@]}" "$@"
}

echo "replaying $(basename "$replay"), plan trained on ${#train[@]} other boot(s), ${latency} ms per chunk read," \
  "${rounds} round(s), replay options: ${poll_args[*]:-none}${cpus:+, pinned to CPUs $cpus}, binaries in $bindir" >&2
results=()
for round in $(seq 1 "$rounds"); do
  start_daemon ",prefetch=off"; a=$(replay_json); stop_daemon
  started=$(date +%s.%N)
  start_daemon ""; ready=$(date +%s.%N)
  b=$(replay_json)
  bstat=$("$lm" mount status --target "$iqn" --lun 0 --json --socket "$work/state/control.sock"); stop_daemon
  # (c): one replay without think time fills the cache, the second is measured.
  start_daemon ",prefetch=off"; replay_json --no-think >/dev/null; c=$(replay_json); stop_daemon
  peer_json --no-think >/dev/null; d=$(peer_json)
  results+=("$(python3 -c 'import json,sys; print(json.dumps(dict(a=json.loads(sys.argv[1]), b=json.loads(sys.argv[2]),
    c=json.loads(sys.argv[3]), st=json.loads(sys.argv[4]), startup=float(sys.argv[5]), d=json.loads(sys.argv[6]))))' \
    "$a" "$b" "$c" "$bstat" "$(python3 -c "print($ready - $started)")" "$d")")
done

python3 - "${results[@]}" <<'PY'
import json, statistics, sys
rounds = [json.loads(x) for x in sys.argv[1:]]
print(f"{'round':5} {'run':24} {'total s':>8} {'stall s':>8} {'idle-stall s':>12} {'late s':>7} {'p50 ms':>7} {'p99 ms':>7}")
ratios_stall, ratios_idle, ratios_total, floors, aboves, errors = [], [], [], [], [], 0
for i, r in enumerate(rounds, 1):
    a, b, c, st, d = r['a'], r['b'], r['c'], r['st'], r.get('d')
    p = st.get("prefetch") or {}
    runs = [("(a) cold, no prefetch", a), ("(b) cold, trained plan", b), ("(c) fully cached", c)]
    if d: runs.append(("(d) tgt, page cache", d))
    for name, x in runs:
        late = x.get('harnessLateSeconds', float('nan'))
        idle = x.get('idleStallSeconds', x['stallSeconds'])
        print(f"{i:<5} {name:24} {x['totalSeconds']:8.2f} {x['stallSeconds']:8.2f} {idle:12.2f} {late:7.2f} "
              f"{x['latency']['p50']/1000:7.2f} {x['latency']['p99']/1000:7.2f}")
    rs = b['stallSeconds'] / a['stallSeconds'] if a['stallSeconds'] > 0 else float('nan')
    ai, bi = a.get('idleStallSeconds', a['stallSeconds']), b.get('idleStallSeconds', b['stallSeconds'])
    ratios_idle.append(bi / ai if ai > 0 else float('nan'))
    rt = b['totalSeconds'] / c['totalSeconds'] if c['totalSeconds'] > 0 else float('nan')
    ratios_stall.append(rs); ratios_total.append(rt)
    print(f"      stall(b)/stall(a) = {rs:.3f} (goal <= 0.25; against idle time {ratios_idle[-1]:.3f})  "
          f"total(b)/total(c) = {rt:.3f} (goal <= 1.15)  "
          f"precision {p.get('precision', 0):.3f} (>= 0.8)  recall {p.get('recall', 0):.3f} (>= 0.9)")
    print(f"      pre-staged {p.get('prestagedBytes', 0)/1048576:.1f} MiB in {p.get('prestageSeconds', 0):.2f} s "
          f"(daemon start to listening {r['startup']:.2f} s); staged {p.get('stagedBytes', 0)/1048576:.1f} MiB, "
          f"used {p.get('usedBytes', 0)/1048576:.1f} MiB; plan {p.get('planEntries', 0)} extents, "
          f"{p.get('planBytes', 0)/1048576:.1f} MiB; lead time median {p.get('leadTimeMedian', 0):.2f} s")
    if d:
        sa, sb, sd = a['stallSeconds'], b['stallSeconds'], d['stallSeconds']
        floors.append(sd / sa if sa > 0 else float('nan'))
        aboves.append((sb - sd) / (sa - sd) if sa > sd else float('nan'))
        print(f"      floor: stall(d)/stall(a) = {floors[-1]:.3f} (the least stall(b)/stall(a) any target reaches here); "
              f"above the floor, (stall(b)-stall(d))/(stall(a)-stall(d)) = {aboves[-1]:.3f}")
        errors += d['errors']
    errors += a['errors'] + b['errors'] + c['errors']
a = rounds[0]['a']
print(f"trace: {a['reads']} reads, {a['bytes']/1048576:.1f} MiB, think time {a['thinkSeconds']:.2f} s as replayed "
      f"(idle time {a['traceThinkSeconds']:.2f} s), own stall {a['traceStallSeconds']:.2f} s, "
      f"concurrency up to {a['traceMaxConcurrency']}")
print(f"median of {len(rounds)} round(s): stall(b)/stall(a) = {statistics.median(ratios_stall):.3f} "
      f"(against idle time {statistics.median(ratios_idle):.3f}), "
      f"total(b)/total(c) = {statistics.median(ratios_total):.3f}")
if floors:
    print(f"median floor stall(d)/stall(a) = {statistics.median(floors):.3f}, "
          f"above the floor (b-d)/(a-d) = {statistics.median(aboves):.3f}")
if errors: print(f"{errors} read errors"); sys.exit(1)
PY
