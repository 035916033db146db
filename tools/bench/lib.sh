# Shared by the benchmarks under tools/bench (sourced, not run).

# iscsi_perf URL DEPTH BLOCKS [-r] → average IOPS of one iscsi-perf run of $seconds seconds (0 on failure).
iscsi_perf() {
  local out
  out=$(timeout $((seconds + 20)) iscsi-perf -m "$2" -b "$3" -t "$seconds" $4 "$1" 2>&1 | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}')
  echo "${out:-0}"
}

# compare_with_tgt TGT_URL LIVEMOUNT_URL: 4 KiB random at QD32 and QD1 and 128 KiB sequential at QD16, tgt
# and livemount alternating for $rounds rounds; prints each round, then the means and the livemount/tgt ratio.
compare_with_tgt() {
  local -A sum=()
  local workloads=("rand4k-qd32:32:8:-r" "rand4k-qd1:1:8:-r" "seq128k-qd16:16:256:")
  local w name depth blocks flag r t l ratio
  printf "%-14s %-6s %10s %10s\n" workload round tgt livemount
  for w in "${workloads[@]}"; do
    IFS=: read -r name depth blocks flag <<<"$w"
    for r in $(seq 1 "$rounds"); do
      t=$(iscsi_perf "$1" "$depth" "$blocks" "$flag")
      l=$(iscsi_perf "$2" "$depth" "$blocks" "$flag")
      sum[$name.t]=$(( ${sum[$name.t]:-0} + t )); sum[$name.l]=$(( ${sum[$name.l]:-0} + l ))
      printf "%-14s %-6s %10s %10s\n" "$name" "$r" "$t" "$l"
    done
  done
  echo
  printf "%-14s %12s %12s %8s\n" workload tgt-iops livemount-iops ratio
  for w in "${workloads[@]}"; do
    name=${w%%:*}
    t=$(( ${sum[$name.t]} / rounds )); l=$(( ${sum[$name.l]} / rounds ))
    ratio=$(python3 -c "print(f'{$l/$t:.2f}' if $t else 'n/a')")
    printf "%-14s %12s %12s %8s\n" "$name" "$t" "$l" "$ratio"
  done
}

# release_binaries: unless $bindir is set (-B), installs the packages and builds livemountd and livemount in
# release mode; sets $bindir and $lm.
release_binaries() {
  if [ -z "$bindir" ]; then
    tools/install-deps.sh
    swift build -c release --product livemountd >&2
    swift build -c release --product livemount >&2
    bindir="$(swift build -c release --show-bin-path)"
  fi
  lm="$bindir/livemount"
}

# bench_workdir NAME: a new $work under $TMPDIR (default /var/tmp), removed at exit unless $keep is 1, with
# $daemon (if set) killed first.
bench_workdir() {
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/livemount-$1.XXXXXX")
  daemon=""
  trap 'bench_cleanup' EXIT
}
bench_cleanup() {
  [ -n "$daemon" ] && kill "$daemon" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${keep:-0}" = 1 ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_livemountd CONFIG: starts livemountd on CONFIG (output in $work/d.out, errors appended to $work/d.err),
# sets $daemon, and returns once it listens (exits with its errors if it never does).
start_livemountd() {
  "$bindir/livemountd" --config "$1" >"$work/d.out" 2>>"$work/d.err" &
  daemon=$!
  for _ in $(seq 1 600); do grep -q listening "$work/d.out" 2>/dev/null && break; sleep 0.1; done
  grep -q listening "$work/d.out" || { cat "$work/d.err" >&2; exit 1; }
}
