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
#     cold, configured by a generated TOML file); the mount is relocated to a new file on the same file
#     system through the control API (POST /v1/mounts/T/L/relocation) and timed from the request to phase
#     `completed` (copy, verify and switch) and to the end of the copy phase: once with `[relocation] verify =
#     true` (the default: once everything is copied, every region is read back from the destination) and once
#     with `verify = false`. Against: `dd if=<raw image>
#     of=<new file> bs=1M oflag=direct conv=fsync`, run first and last (mean), and, as the peer of the
#     verifying pump, that dd followed by an O_DIRECT read of the whole copy. Each destination is compared
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
. tools/bench/lib.sh
release_binaries
here=tools/bench/relocate
bench_workdir relocate-bench
now() { date +%s.%N; }

iqn=iqn.2026-11.org.livemount:relocate-bench
sock="$work/state/control.sock"
api="http://livemountd/v1/mounts/$iqn/0/relocation"
call() { # METHOD URL [BODY] → response body; fails on HTTP >= 400
  curl -sS --fail-with-body --unix-socket "$sock" -X "$1" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$2"
}
field() { python3 -c 'import json,sys; d=json.load(sys.stdin); print(d.get(sys.argv[1]))' "$1"; }

start_daemon() { # [VERIFY] — fresh cache and mount state each time: a cold live mount of the backup
  local verify=${1:-true}
  rm -f "$work/cache.img" "$work/cache.img.index"* "$work/d.out"
  rm -rf "$work/state"
  mkdir -p "$work/state"
  port=$(free_port)
  cat >"$work/livemount.toml" <<TOML
[daemon]
state_dir = "$work/state"
log_level = "warning"
[[portals]]
listen = "127.0.0.1:$port"
[repository]
path = "$work/repo"
[cache]
path = "$work/cache.img"
size = "${cache}M"
[relocation]
verify = $verify
[[targets]]
name = "$iqn"
  [[targets.luns]]
  lun = 0
  backup = "relbench"
TOML
  start_livemountd "$work/livemount.toml"
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
readback_run() { # → seconds of dd writing the image (as dd_run) and then reading it back with O_DIRECT
  rm -f "$work/dd.img"
  local t0 t1
  t0=$(now)
  dd if="$work/disk.img" of="$work/dd.img" bs=1M oflag=direct conv=fsync status=none
  dd if="$work/dd.img" of=/dev/null bs=1M iflag=direct status=none
  t1=$(now)
  rm -f "$work/dd.img"
  python3 -c "print($t1 - $t0)"
}
relocate_run() { # VERIFY → "SECONDS_TO_COMPLETED SECONDS_TO_END_OF_COPY IDENTICAL STATUS_JSON"
  start_daemon "$1"
  local t0 t1 copy_end="" phase status same
  t0=$(now)
  call POST "$api" "{\"to\":\"$work/primary.img\"}" >/dev/null
  while :; do
    status=$(call GET "$api")
    phase=$(field phase <<<"$status")
    [ -z "$copy_end" ] && [ "$phase" != copying ] && copy_end=$(now)
    case $phase in completed) break ;; failed | cancelled) echo "relocation $phase: $status" >&2; exit 1 ;; esac
    sleep 0.05
  done
  t1=$(now)
  stop_daemon
  same=$(cmp -s "$work/disk.img" "$work/primary.img" && echo identical || echo DIFFERENT)
  rm -f "$work/primary.img"
  echo "$(python3 -c "print($t1 - $t0, $copy_end - $t0)") $same $status"
}
echo "(a) dd, relocation (verify on), dd with read-back, relocation (verify off), dd" >&2
dd1=$(dd_run)
ron=$(relocate_run true)
rb=$(readback_run)
roff=$(relocate_run false)
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

python3 - "$bytes" "$dd1" "$dd2" "$rb" "$ron" "$roff" "$b1" "$b2" "$b3" "$p0" "$p1" "$iops" "$seconds" <<'PY'
import json, sys
a = sys.argv[1:]
size = int(a[0]); mib = size / 1048576
dd1, dd2, rb = (float(x) for x in a[1:4])
def run(text):
    total, copy, same, status = text.split(" ", 3)
    return float(total), float(copy), same, json.loads(status)
ron, roff = run(a[4]), run(a[5])
b1, b2, b3, p0, p1 = (json.loads(x) for x in a[6:11])
iops, seconds = a[11], a[12]
dd_rate = mib / ((dd1 + dd2) / 2)
print(f"(a) idle guest, {mib:.0f} MiB disk ({ron[3].get('bytesZero', 0) / 1048576:.0f} MiB skipped as zero by the pump)")
print(f"{'method':56} {'seconds':>9} {'MiB/s':>9}")
print(f"{'dd bs=1M oflag=direct conv=fsync (1)':56} {dd1:9.2f} {mib / dd1:9.1f}")
print(f"{'dd bs=1M oflag=direct conv=fsync (2)':56} {dd2:9.2f} {mib / dd2:9.1f}")
print(f"{'dd, then read back (iflag=direct)':56} {rb:9.2f} {mib / rb:9.1f}")
for name, r in (("verify on (default)", ron), ("verify off", roff)):
    print(f"{'relocation, ' + name + ', copy phase':56} {r[1]:9.2f} {mib / r[1]:9.1f}")
    print(f"{'relocation, ' + name + ', request to completed':56} {r[0]:9.2f} {mib / r[0]:9.1f}")
print(f"relocation/dd = {mib / ron[0] / dd_rate:.2f} verify on, {mib / roff[0] / dd_rate:.2f} verify off  (goal >= 0.90); "
      f"copy phase with verify on: {mib / ron[1] / dd_rate:.2f}")
print(f"relocation with verify / dd with read-back = {rb / ron[0]:.2f}")
print(f"destination vs raw image: {ron[2]} (verify on), {roff[2]} (verify off)")
same = "identical" if ron[2] == roff[2] == "identical" else "DIFFERENT"
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
