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
