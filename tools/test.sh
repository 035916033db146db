#!/usr/bin/env bash
# README's test command: installs what the tests need, runs every unit and
# end-to-end test (swift test), then libiscsi's conformance suite against a
# freshly started livemountd: a writable raw LUN and a read-only one, then
# a writable live mount of a backup and a read-only one.
# Fails on any failing test and on any conformance FAIL.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh

echo "== swift test"
swift test

echo "== conformance (libiscsi iscsi-test-cu against livemountd, raw image LUN)"
tools/conformance.sh

echo "== conformance (libiscsi iscsi-test-cu against livemountd, live mount of a backup)"
tools/conformance.sh -l
