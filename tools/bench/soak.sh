#!/usr/bin/env bash
# Soak benchmark (issue 6, acceptance 3), on 127.0.0.1 only:
#
#   tools/bench/soak.sh [-t SECONDS] [-s SESSIONS] [-r READ_PERCENT] [-B BINDIR] [-k]
#
# livemountd (release build) serves one target with four LUNs: two raw image files (256 MiB each) and two
# live mounts of backups of two 256 MiB disks of realistic content (tools/bench/relocate/make-disk.py), with
# a 512 MiB cache. `livemount lun soak` runs SESSIONS (default 64) sessions spread over the four LUNs for
# SECONDS (default 600), each doing 4-64 KiB reads and writes (READ_PERCENT reads, default 70) on its own slice
# and checking every read against what it wrote. The daemon's resident memory is sampled every 5 s.
# Goals: zero errors and mismatches; memory stable (the last minute's mean RSS within 10% of the mean of the
# minute after the first one, when the working set has been touched).
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=600; sessions=64; reads=70; bindir=""; keep=0
while getopts "t:s:r:B:k" opt; do
  case $opt in t) seconds=$OPTARG ;; s) sessions=$OPTARG ;; r) reads=$OPTARG ;; B) bindir=$OPTARG ;; k) keep=1 ;; *) exit 2 ;; esac
done
. tools/bench/lib.sh
release_binaries
bench_workdir soak
port=$(free_port)
iqn=iqn.2026-11.org.livemount:soak

echo "making two raw LUN images and two backups" >&2
for i in 1 2; do
  truncate -s 256M "$work/raw$i.img"
  python3 tools/bench/relocate/make-disk.py "$work/disk$i.img" 256
  echo "name = \"soak$i\"" >"$work/vm$i.conf"
  "$lm" backup create --repo "$work/repo" --vm "soak$i" --config "$work/vm$i.conf" --disk "disk0=$work/disk$i.img" \
    >/dev/null 2>&1
done
mkdir -p "$work/state"
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
size = "512M"
[[targets]]
name = "$iqn"
  [[targets.luns]]
  lun = 0
  path = "$work/raw1.img"
  [[targets.luns]]
  lun = 1
  path = "$work/raw2.img"
  [[targets.luns]]
  lun = 2
  backup = "soak1"
  [[targets.luns]]
  lun = 3
  backup = "soak2"
TOML
start_livemountd "$work/livemount.toml"

# RSS every 5 s (seconds since start, KiB).
( t0=$(date +%s); while kill -0 "$daemon" 2>/dev/null; do
    echo "$(( $(date +%s) - t0 )) $(awk '/VmRSS/ {print $2}' /proc/$daemon/status 2>/dev/null)"; sleep 5
  done ) >"$work/rss.txt" &
sampler=$!

urls=()
for lun in 0 1 2 3; do urls+=("iscsi://127.0.0.1:$port/$iqn/$lun"); done
echo "soak: $sessions sessions over 4 LUNs (2 raw, 2 live mounts), $reads% reads, $seconds s" >&2
status=0
"$lm" lun soak "${urls[@]}" --sessions "$sessions" --seconds "$seconds" --read-percent "$reads" --report 60 \
  | tee "$work/soak.txt" || status=$?
kill "$sampler" 2>/dev/null || true
grep -i -E "error|fatal" "$work/d.err" | head -5 >&2 || true

python3 - "$work/rss.txt" "$seconds" <<'PY'
import sys
rows = [line.split() for line in open(sys.argv[1]) if len(line.split()) == 2]
rows = [(int(t), int(k)) for t, k in rows]
seconds = int(sys.argv[2])
if not rows: print("no RSS samples"); sys.exit(1)
def mean(lo, hi):
    xs = [k for t, k in rows if lo <= t < hi]
    return sum(xs) / len(xs) if xs else float("nan")
first = mean(60, 120) if seconds >= 180 else mean(seconds // 3, 2 * seconds // 3)
last = mean(seconds - 60, seconds + 1) if seconds >= 180 else mean(2 * seconds // 3, seconds + 1)
peak = max(k for _, k in rows)
print(f"daemon RSS: start {rows[0][1] / 1024:.1f} MiB, after warm-up {first / 1024:.1f} MiB, "
      f"last minute {last / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB; growth {100 * (last - first) / first:+.1f}% "
      "(goal within 10%)")
PY
kill -0 "$daemon" 2>/dev/null || { echo "livemountd died" >&2; exit 1; }
exit $status
