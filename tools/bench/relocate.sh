#!/usr/bin/env bash
# Benchmark (issue 5, acceptance 3): the relocation pump, on 127.0.0.1 only.
#
#   tools/bench/relocate.sh [-z DISK_MIB] [-c CACHE_MIB] [-t SECONDS] [-I IOPS] [-B BINDIR] [-k]
#
# -B uses livemountd and livemount already built (release) in BINDIR instead of building them here.
#
# (a) Idle guest. A DISK_MIB (default 2048) disk of realistic content (per 1 MiB chunk: random data, zeros,
#     repeats of earlier chunks, compressible text; see tools/bench/relocate/make-disk.py) is backed up with
#     `livemount backup create` and live-mounted by livemountd (release build, cache CACHE_MIB, default 1024,
#     cold); the mount is relocated to a new file on the same file system through the control API
#     (POST /v1/mounts/T/L/relocation) and timed from the request to phase `completed` (copy, verify and
#     switch), and to the end of the copy phase. Against: `dd if=<raw image> of=<new file> bs=1M
#     oflag=direct conv=fsync`, run before and after the relocation (mean). The destination is then compared
#     with the raw image (cmp). Goal: relocation rate >= 0.90 x dd's.
# (b) Busy guest. A fresh mount; a guest doing 4 KiB random reads over the first quarter of the disk at IOPS
#     (default 2000, queue depth 1, think time between reads) for SECONDS (default 20): one warm-up pass,
#     then without the pump, with the pump running (started just before; it must still be copying at the end,
#     else the figure is flagged), and without again (after cancelling). The guest is `livemount trace
#     replay` of a synthetic trace (tools/bench/relocate/make-trace.py): fio here has no libiscsi engine and
#     iscsi-perf reports IOPS only, while the replay issues reads over libiscsi at the trace's pace and reports
#     the latency distribution. Goal: p99 with the pump <= 1.20 x p99 without (mean of the two runs).
#
# Everything lives under a temporary directory ($TMPDIR, default /var/tmp), removed at the end (-k keeps it).
set -euo pipefail
cd "$(dirname "$0")/../.."
size=2048; cache=1024; seconds=20; iops=2000; keep=0; bindir=""
while getopts "z:c:t:I:B:k" opt; do
  case $opt in
  z) size=$OPTARG ;; c) cache=$OPTARG ;; t) seconds=$OPTARG ;; I) iops=$OPTARG ;; B) bindir=$OPTARG ;;
  k) keep=1 ;; *) exit 2 ;;
  esac
done
if [ -z "$bindir" ]; then
  tools/install-deps.sh
  swift build -c release --product livemountd >&2
  swift build -c release --product livemount >&2
  bindir="$(swift build -c release --show-bin-path)"
fi
lm="$bindir/livemount"
here=tools/bench/relocate

work=$(mktemp -d "${TMPDIR:-/var/tmp}/livemount-relocate-bench.XXXXXX")
daemon=""
cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "$keep" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }

iqn=iqn.2026-11.org.livemount:relocate-bench
sock="$work/state/control.sock"
api="http://livemountd/v1/mounts/$iqn/0/relocation"
call() { # METHOD URL [BODY] → response body; fails on HTTP >= 400
  curl -sS --fail-with-body --unix-socket "$sock" -X "$1" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$2"
}
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get(sys.argv[1]))' "$1"; }

start_daemon() { # fresh cache and mount state each time: a cold live mount of the backup
  rm -f "$work/cache.img" "$work/cache.img.index"* "$work/d.out"
  rm -rf "$work/state"
  mkdir -p "$work/state"
  port=$(free_port)
  "$bindir/livemountd" --listen "127.0.0.1:$port" --target "$iqn" --repo "$work/repo" \
    --cache "$work/cache.img,${cache}M" --state-dir "$work/state" --lun "0=backup:relbench" \
    --log-level warning >"$work/d.out" 2>>"$work/d.err" &
  daemon=$!
  for _ in $(seq 1 600); do grep -q listening "$work/d.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/d.out" || { cat "$work/d.err" >&2; exit 1; }
  for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
  url="iscsi://127.0.0.1:$port/$iqn/0"
}
stop_daemon() { kill "$daemon"; wait "$daemon" 2>/dev/null || true; daemon=""; }

# --- The disk and its backup --------------------------------------------------------------------------------
echo "making a ${size} MiB disk (random, zero, repeated and text chunks) and backing it up" >&2
python3 "$here/make-disk.py" "$work/disk.img" "$size"
echo 'name = "relbench"' >"$work/vm.conf"
"$lm" backup create --repo "$work/repo" --vm relbench --config "$work/vm.conf" --disk "disk0=$work/disk.img" >&2
bytes=$(stat -c %s "$work/disk.img")

# --- (a) idle guest: relocation vs dd -----------------------------------------------------------------------
dd_run() { # → seconds of one dd of the raw image to a new file with O_DIRECT and a final fsync
  rm -f "$work/dd.img"
  local t0 t1
  t0=$(now)
  dd if="$work/disk.img" of="$work/dd.img" bs=1M oflag=direct conv=fsync status=none
  t1=$(now)
  rm -f "$work/dd.img"
  python3 -c "print($t1 - $t0)"
}
echo "(a) dd, relocation with an idle guest, dd" >&2
dd1=$(dd_run)
start_daemon
t0=$(now)
call POST "$api" "{\"to\":\"$work/primary.img\"}" >/dev/null
copy_end=""; phase=copying
while :; do
  status=$(call GET "$api")
  phase=$(field phase <<<"$status")
  [ -z "$copy_end" ] && [ "$phase" != copying ] && copy_end=$(now)
  case $phase in completed) break ;; failed | cancelled) echo "relocation $phase: $status" >&2; exit 1 ;; esac
  sleep 0.05
done
t1=$(now)
astatus=$status
stop_daemon
same=$(cmp -s "$work/disk.img" "$work/primary.img" && echo identical || echo DIFFERENT)
rm -f "$work/primary.img"
dd2=$(dd_run)

# --- (b) busy guest: 4 KiB random reads, p50/p99 without and with the pump -----------------------------------
echo "(b) guest 4 KiB random reads at $iops IOPS for $seconds s: warm-up, without, with the pump, without" >&2
python3 "$here/make-trace.py" "$work/guest.csv" "$bytes" "$iops" "$seconds"
replay() { "$lm" trace replay "$work/guest.csv" --url "$url" --json --quiet; }
start_daemon
replay >/dev/null
b1=$(replay)
call POST "$api" "{\"to\":\"$work/primary.img\"}" >/dev/null
p0=$(call GET "$api")
b2=$(replay)
p1=$(call GET "$api")
call DELETE "$api" >/dev/null
sleep 1
b3=$(replay)
stop_daemon

python3 - "$bytes" "$dd1" "$dd2" "$t0" "$copy_end" "$t1" "$same" "$astatus" "$b1" "$b2" "$b3" "$p0" "$p1" \
  "$iops" "$seconds" <<'PY'
import json, sys
a = sys.argv[1:]
size = int(a[0]); mib = size / 1048576
dd1, dd2, t0, copy_end, t1 = (float(x) for x in a[1:6])
same, st = a[6], json.loads(a[7])
b1, b2, b3, p0, p1 = (json.loads(x) for x in a[8:13])
iops, seconds = a[13], a[14]
dd_rate = mib / ((dd1 + dd2) / 2)
total, copy = t1 - t0, copy_end - t0
print(f"(a) idle guest, {mib:.0f} MiB disk ({st.get('bytesZero', 0) / 1048576:.0f} MiB skipped as zero by the pump)")
print(f"{'method':40} {'seconds':>9} {'MiB/s':>9}")
print(f"{'dd bs=1M oflag=direct conv=fsync (1)':40} {dd1:9.2f} {mib / dd1:9.1f}")
print(f"{'dd bs=1M oflag=direct conv=fsync (2)':40} {dd2:9.2f} {mib / dd2:9.1f}")
print(f"{'relocation, copy phase':40} {copy:9.2f} {mib / copy:9.1f}")
print(f"{'relocation, request to completed':40} {total:9.2f} {mib / total:9.1f}")
print(f"relocation/dd = {mib / total / dd_rate:.2f} (to completed), {mib / copy / dd_rate:.2f} (copy phase)  "
      f"(goal >= 0.90); destination vs raw image: {same}")
print()
print(f"(b) guest: 4 KiB random reads, {iops} IOPS target, QD1, {seconds} s per run")
print(f"{'run':26} {'reads':>7} {'IOPS':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
for name, r in (("without pump", b1), ("with pump", b2), ("without pump (after)", b3)):
    lat = r['latency']
    print(f"{name:26} {r['reads']:7d} {r['reads'] / r['totalSeconds']:8.0f} {lat['p50'] / 1000:8.3f} "
          f"{lat['p99'] / 1000:8.3f} {lat.get('max', 0) / 1000:8.3f}")
base99 = (b1['latency']['p99'] + b3['latency']['p99']) / 2
base50 = (b1['latency']['p50'] + b3['latency']['p50']) / 2
copied = (p1['bytesDone'] - p0['bytesDone']) / 1048576
print(f"pump during the run: {copied:.0f} MiB copied ({copied / b2['totalSeconds']:.1f} MiB/s), "
      f"{p1['backoffs'] - p0['backoffs']} back-offs, phase at the end: {p1['phase']}"
      + ("" if p1['phase'] == 'copying' else "  (NOT copying the whole run: figure not valid)"))
print(f"p50 with/without = {b2['latency']['p50'] / base50:.2f}   p99 with/without = {b2['latency']['p99'] / base99:.2f}"
      "  (goal p99 <= 1.20)")
errors = b1['errors'] + b2['errors'] + b3['errors']
if errors: print(f"{errors} read errors"); sys.exit(1)
if same != "identical": sys.exit(1)
PY
