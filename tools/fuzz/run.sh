#!/usr/bin/env bash
# Fuzzes the iSCSI PDU decoder and login state machine with libFuzzer (the
# Swift toolchain's -sanitize=fuzzer, with AddressSanitizer).
#   tools/fuzz/run.sh [SECONDS] [extra libFuzzer flags...]
# Crash inputs land in tools/fuzz/crashes/; copy each into
# Tests/ISCSIProtocolTests/FuzzRegressions/ so it stays a regression test.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-120}; shift || true
swift build -c release --product PDUFuzzer --scratch-path .build-fuzz \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -DFUZZING >&2
bin=.build-fuzz/release/PDUFuzzer
mkdir -p tools/fuzz/corpus tools/fuzz/crashes
cp -n Tests/ISCSIProtocolTests/FuzzRegressions/* tools/fuzz/corpus/ 2>/dev/null || true
"$bin" tools/fuzz/corpus -max_total_time="$seconds" -max_len=4096 -timeout=5 \
  -artifact_prefix=tools/fuzz/crashes/ -print_final_stats=1 "$@"
