#!/usr/bin/env bash
# Installs the Debian packages LiveMount builds and tests with, if missing.
# Used by tools/run.sh and tools/test.sh; safe to run again.
set -euo pipefail
packages=(libiscsi-dev libiscsi-bin libaio-dev libsqlite3-dev libzstd-dev libcurl4-openssl-dev tgt)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
