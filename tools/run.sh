#!/usr/bin/env bash
# README's run command: installs what LiveMount needs, builds livemountd and
# the livemount tool, and serves the embedded default configuration
# (conf/livemount.toml) on 127.0.0.1:3260: LUN 0 of
# iqn.2026-11.org.example:disk0 is a live mount of the backup of VM "demo"
# (a 1 GiB demo disk, ingested into /var/tmp/livemount/repository on the first
# run), LUN 1 a scratch 1 GiB image. Extra arguments go to livemountd.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
swift build -c release --product livemountd >&2
swift build -c release --product livemount >&2
bin="$(swift build -c release --show-bin-path)"
base=/var/tmp/livemount
mkdir -p "$base/state"
[ -f "$base/disk0.img" ] || truncate -s 1G "$base/disk0.img"
if ! "$bin/livemount" backup list --repo "$base/repository" --vm demo 2>/dev/null | grep -q demo; then
  # The demo disk: 64 MiB of data (random, so it does not compress away) in a 1 GiB disk of zeros.
  head -c 64M /dev/urandom >"$base/demo.img"
  truncate -s 1G "$base/demo.img"
  printf 'name = "demo"\nmemory_mib = 1024\ndisks = ["disk0"]\n' >"$base/demo.conf"
  "$bin/livemount" backup create --repo "$base/repository" --vm demo --config "$base/demo.conf" \
    --disk "disk0=$base/demo.img" >&2
  rm -f "$base/demo.img"
fi
exec "$bin/livemountd" --config conf/livemount.toml "$@"
