#!/usr/bin/env bash
# README's run command: installs what LiveMount needs, builds livemountd and
# serves the embedded default configuration (conf/livemount.toml): a scratch
# 1 GiB image at /var/tmp/livemount/disk0.img as LUN 0 of
# iqn.2026-11.org.example:disk0 on 127.0.0.1:3260. Extra arguments go to livemountd.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
swift build -c release --product livemountd >&2
mkdir -p /var/tmp/livemount/state
[ -f /var/tmp/livemount/disk0.img ] || truncate -s 1G /var/tmp/livemount/disk0.img
exec "$(swift build -c release --show-bin-path)/livemountd" --config conf/livemount.toml "$@"
