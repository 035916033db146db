#!/usr/bin/env bash
# Benchmark (issue 3, acceptance 5): ingest memory and incremental backups.
#
#   tools/bench/ingest-memory.sh [-d DIR]
#
# Backs up, with `livemount backup create`, sparse images of 1 GiB and 16 GiB
# and random images of 256 MiB and 2 GiB, and reports each run's peak RSS
# (GNU time's "Maximum resident set size"): it must not grow with the disk.
# Then changes 1% of the 2 GiB image's chunks (20 of 2048, at random) and
# backs it up again: the new chunk bytes stored should be about 1%.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=""
while getopts "d:" opt; do case $opt in d) dir=$OPTARG ;; *) exit 2 ;; esac; done
tools/install-deps.sh
command -v /usr/bin/time >/dev/null || { sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo; $sudo apt-get install -y -qq time >/dev/null; }
swift build -c release --product livemount >&2
tool="$(swift build -c release --show-bin-path)/livemount"
work=$(mktemp -d "${dir:-/var/tmp}/livemount-ingest.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo 'name = "bench"' >"$work/vm.conf"

ingest() { # name image → prints the summary line and the peak RSS
  /usr/bin/time -v "$tool" backup create --repo "$work/repo" --vm "$1" --config "$work/vm.conf" --disk "disk0=$2" \
    >"$work/out" 2>"$work/err" || { cat "$work/err"; exit 1; }
  rss=$(grep "Maximum resident set size" "$work/err" | awk '{print $NF}')
  secs=$(grep "Elapsed (wall clock)" "$work/err" | awk '{print $NF}')
  printf "%-22s peak RSS %7.1f MiB  wall %8s  %s\n" "$1" "$(echo "$rss/1024" | bc -l)" "$secs" "$(cat "$work/out")"
}

truncate -s 1G "$work/sparse1g.img";  ingest sparse-1GiB "$work/sparse1g.img"
truncate -s 16G "$work/sparse16g.img"; ingest sparse-16GiB "$work/sparse16g.img"
rm -f "$work"/sparse*.img
head -c 256M /dev/urandom >"$work/random256m.img"; ingest random-256MiB "$work/random256m.img"; rm -f "$work/random256m.img"
head -c 2G /dev/urandom >"$work/random2g.img"; ingest random-2GiB "$work/random2g.img"

# Change 20 of the 2048 chunks (1%): one random 4 KiB write inside each of 20 distinct chunks.
python3 - "$work/random2g.img" <<'PY'
import os, random, sys
with open(sys.argv[1], "r+b") as f:
    for chunk in random.sample(range(2048), 20):
        f.seek(chunk * (1 << 20) + random.randrange(0, (1 << 20) - 4096, 4096))
        f.write(os.urandom(4096))
PY
ingest random-2GiB-changed "$work/random2g.img"
"$tool" backup list --repo "$work/repo"
