#!/usr/bin/env bash
# The whole chain, end to end (issue 6): a Debian guest (tools/boot, form b: the BIOS boots GRUB from the LUN) is
# backed up, live-mounted, booted over iSCSI while its boot is recorded, a prefetch plan is trained, it is booted
# again with the plan on a cold cache, relocated to a primary LUN (a file) while it writes files, shut down, and
# booted straight from the primary, where the files it wrote during the relocation must be, with their contents.
#
# Usage: tools/e2e/whole-chain.sh [options]
#   --work DIR         work directory (default: a new /var/tmp/livemount-e2e.XXXXXX); removed after a green run
#                      unless --keep, kept after a failure for its logs
#   --keep             keep the work directory after a green run too
#   -B, --bin DIR      livemountd and livemount already built (default: build them in release mode)
#   --latency MS       latency injected per chunk read from the repository (default 20)
#   --max-rate MIB     the relocation's ceiling, `livemount relocate --max-rate` (default 32)
#   --write-pause S    the guest's pause after each file it writes (default 0.5; 0 writes back to back)
#   --after-switch N   files the guest writes after the switchover before it is told to stop (default 3)
#   --cache-size SIZE  the daemon's cache file (default 2G)
#   --timeout SEC      the longest any one boot or the relocation may take (default 900)
#
# The guest learns what to do on each boot from QEMU's fw_cfg (opt/livemount/mode: boot, write, verify; see
# tools/boot/guest/livemount-guest.sh): the backup is never changed, so the mode comes from outside. In write mode it
# writes a file at a time (fsync, sync, then a LIVEMOUNT-E2E-WROTE line with its SHA-256 on ttyS0) until the script
# sends "stop" on its second serial port. Those lines are the list of acknowledged writes the last boot checks. The
# writing starts before the relocation and goes on through its copy, verification and switchover until
# --after-switch files have gone to the primary, so the window always overlaps the whole relocation; --max-rate
# keeps the relocation long enough for the guest to write many files meanwhile.
#
# Prints a line per step on stderr, and a table of the phases' wall times at the end; exits 1 naming the phase
# that failed (and where its logs are). The daemon and QEMU are stopped on exit, however the script ends.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
boot_dir="$root/tools/boot"
# shellcheck source=../boot/lib.sh
source "$boot_dir/lib.sh"
# release_binaries, free_port, start_livemountd ($bindir, $work, $daemon).
# shellcheck source=../bench/lib.sh
source "$root/tools/bench/lib.sh"

work="" keep=0 bindir="" latency=20 max_rate=32 write_pause=0.5 after_switch=3 cache_size="2G" timeout_s=900
while [ $# -gt 0 ]; do
  case "$1" in
    --work) work="${2:?--work needs a directory}"; shift 2 ;;
    --keep) keep=1; shift ;;
    -B|--bin) bindir="${2:?$1 needs a directory}"; shift 2 ;;
    --latency) latency="${2:?--latency needs milliseconds}"; shift 2 ;;
    --max-rate) max_rate="${2:?--max-rate needs MiB/s}"; shift 2 ;;
    --write-pause) write_pause="${2:?--write-pause needs seconds}"; shift 2 ;;
    --after-switch) after_switch="${2:?--after-switch needs a number of files}"; shift 2 ;;
    --cache-size) cache_size="${2:?--cache-size needs a size}"; shift 2 ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
for n in latency max_rate after_switch timeout_s; do
  [[ "${!n}" =~ ^[0-9]+$ ]] || die "--${n//_/-} ${!n}: expected a whole number"
done
[[ "$write_pause" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--write-pause $write_pause: expected seconds"
[ "$max_rate" -gt 0 ] || die "--max-rate 0: the relocation must be capped to overlap the guest's writes"
[ "$(id -u)" = 0 ] || die "whole-chain.sh needs root (build-image.sh: debootstrap, chroot)"
cd "$root"

# Prints a progress line on stderr.
log() { printf '%s e2e: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# Fails the current phase: the message, then exit 1 (the exit trap names the phase, stops everything, keeps $work).
fail() { printf '%s e2e: FAILED: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

if [ -z "$work" ]; then
  work=$(mktemp -d /var/tmp/livemount-e2e.XXXXXX)
else
  mkdir -p "$work"
  [ -z "$(ls -A "$work")" ] || die "--work $work: not empty (the chain starts from nothing)"
fi
work="$(cd "$work" && pwd)"
image="$LIVEMOUNT_BOOT_DIR/disk-b.img"
vm="e2e-guest"
target="iqn.2026-11.org.livemount:e2e"
mount="$target/0"
repo="$work/repository"
cache="$work/cache.img"
state="$work/state"
socket="$state/control.sock"
config="$work/livemountd.toml"
primary="$work/primary.img"
control="$work/guest-ttyS1.sock"
expected="$work/expected.txt"
export LIVEMOUNT_SOCKET="$socket" LIVEMOUNT_TRACES="$state/traces.sqlite"

# MARK: - Cleanup and the phase table

daemon=""   # livemountd's pid (start_livemountd sets it)
guest=""    # the background boot.sh's pid: the leader of its own process group (setsid), with QEMU in it
guest_label=""
phase_name="setup"
phases=()   # "NAME|SECONDS|NOTE" in order

# Stops the guest (its whole process group: boot.sh, timeout, QEMU) and the daemon this script started. QEMU is
# waited for before the daemon goes: its iSCSI driver drains the requests in flight on the way out, and would retry
# them against a target that is gone.
stop_guest() {
  [ -n "$guest" ] || return 0
  kill -TERM -- "-$guest" 2>/dev/null || true
  local _
  for _ in $(seq 200); do kill -0 -- "-$guest" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$guest" 2>/dev/null || true
  wait "$guest" 2>/dev/null || true
  guest=""
}
stop_daemon() {
  [ -n "$daemon" ] || return 0
  kill -TERM "$daemon" 2>/dev/null || true
  local _
  for _ in $(seq 300); do kill -0 "$daemon" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  daemon=""
}
on_exit() {
  local rc=$?
  stop_guest
  stop_daemon
  if [ "$rc" != 0 ]; then
    print_table >&2 || true
    printf 'e2e: FAILED in phase "%s" (exit %s); logs in %s\n' "$phase_name" "$rc" "$work" >&2
  elif [ "$keep" = 1 ]; then
    echo "e2e: kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# run_phase NAME FUNCTION: runs the phase, adds its wall time (and the note it left in $note) to the table.
note=""
run_phase() {
  phase_name="$1"
  note=""
  local start; start=$(date +%s.%N)
  log "phase $1"
  "$2"
  phases+=("$1|$(elapsed_since "$start")|$note")
  log "phase $1 done in $(elapsed_since "$start") s${note:+ ($note)}"
}
print_table() {
  [ ${#phases[@]} -gt 0 ] || return 0
  local row name seconds text total=0
  printf '\n%-16s %9s  %s\n' phase seconds notes
  printf '%-16s %9s  %s\n' ---------------- --------- -----
  for row in "${phases[@]}"; do
    IFS='|' read -r name seconds text <<< "$row"
    printf '%-16s %9s  %s\n' "$name" "$seconds" "$text"
    total=$(awk -v a="$total" -v b="$seconds" 'BEGIN { printf "%.2f", a + b }')
  done
  printf '%-16s %9s\n' total "$total"
}

# MARK: - Helpers

# Prints the wall seconds since QEMU started (boot.sh's stamp) of the first line of serial log $1 matching $2.
serial_time() { awk -v p="$2" '$0 ~ p { print $1; exit }' "$1" 2>/dev/null; }
# Prints how many writes (files, and patches of base.bin) the guest has reported in serial log $1.
files_written() { grep -a -c 'LIVEMOUNT-E2E-WROTE ' "$1" 2>/dev/null || true; }

# Starts livemountd on a fresh free port with the generated configuration (repository latency, cache, state
# directory, the backup as LUN 0 of $target); sets $port and $url.
start_daemon() {
  port=$(free_port)
  url="iscsi://127.0.0.1:$port/$target/0"
  cat > "$config" <<EOF
# Generated by tools/e2e/whole-chain.sh.
[daemon]
state_dir = "$state"
control_socket = "$socket"
log_level = "info"

[[portals]]
listen = "127.0.0.1:$port"

[repository]
path = "$repo"
read_latency_ms = $latency

[cache]
path = "$cache"
size = "$cache_size"

# The pump reads every region back before it switches over; \`livemount relocate --max-rate\` caps this relocation.
[relocation]
verify = true

[[targets]]
name = "$target"
alias = "e2e"

  [[targets.luns]]
  lun = 0
  backup = "$vm"
EOF
  "$bindir/livemountd" --check --config "$config" >> "$work/livemountd-check.log" 2>&1 \
    || { cat "$work/livemountd-check.log" >&2; fail "livemountd --check rejected $config"; }
  start_livemountd "$config"
  log "livemountd pid $daemon on 127.0.0.1:$port ($latency ms per chunk read, cache $cache_size)"
}

# start_guest LABEL MODE TIMEOUT BOOT-ARGS...: boot.sh in the background, in a process group of its own (so that
# stop_guest ends QEMU with it), with fw_cfg mode MODE; LABEL names its logs (serial-LABEL.log, boot-LABEL.out).
# Sets $guest. Waiting for it in the background keeps the script answering signals while a boot runs.
start_guest() {
  guest_label="$1"
  local mode="$2" limit="$3"; shift 3
  setsid "$boot_dir/boot.sh" "$@" --fw-cfg "opt/livemount/mode=$mode" --timeout "$limit" \
    --serial-log "$work/serial-$guest_label.log" > "$work/boot-$guest_label.out" 2> "$work/boot-$guest_label.err" &
  guest=$!
}

# Waits for the guest to power off and fails unless boot.sh saw a good boot; sets $boot_summary.
wait_guest() {
  local rc=0
  wait "$guest" || rc=$?
  guest=""
  boot_summary=$(grep '^boot:' "$work/boot-$guest_label.out" || true)
  if [ "$rc" != 0 ]; then
    cat "$work/boot-$guest_label.out" >&2
    tail -n 5 "$work/boot-$guest_label.err" >&2
    fail "boot $guest_label failed (serial log $work/serial-$guest_label.log)"
  fi
  sed "s/^boot:/  boot $guest_label:/" <<< "$boot_summary" >&2
}

# Fails with $1 unless the background guest still runs.
require_guest() {
  kill -0 "$guest" 2>/dev/null || fail "the guest ended $1: $(cat "$work/boot-$guest_label.out" 2>/dev/null)"
}

# Prints field $2 (time, guest-uptime) of boot.sh's summary $1, without the unit.
summary_field() { sed -n "s/.* $2=\([0-9.]*\)s.*/\1/p" <<< "$1" | head -n1; }

# Waits up to $timeout_s for serial log $1 to have a line matching $2 while the background guest runs.
wait_for_serial() {
  local log_file="$1" pattern="$2" what="$3" _
  for _ in $(seq $((timeout_s * 2))); do
    grep -a -q "$pattern" "$log_file" 2>/dev/null && return 0
    require_guest "before $what"
    sleep 0.5
  done
  fail "no $what within $timeout_s s (serial log $log_file)"
}

# MARK: - Phases

# The packages (tools/install-deps.sh, the boot tools', jq) and livemountd and livemount in release mode.
phase_build() {
  BOOT_PACKAGES+=(jq)
  install_boot_deps
  release_binaries
  [ -x "$bindir/livemountd" ] && [ -x "$bindir/livemount" ] || fail "no livemountd and livemount in $bindir"
  note="$bindir"
}

# 1. The guest image (tools/boot/build-image.sh: reused when complete and current).
phase_image() {
  "$boot_dir/build-image.sh" > "$work/build-image.log" 2>&1 \
    || { tail -n 20 "$work/build-image.log" >&2; fail "tools/boot/build-image.sh failed"; }
  [ -f "$image" ] || fail "$image was not built"
  note="$(basename "$image"), $(du -m "$image" | cut -f1) MiB allocated of $(( $(stat -c %s "$image") >> 20 )) MiB"
}

# 2. A backup of the image in a fresh repository.
phase_backup() {
  cat > "$work/$vm.conf" <<EOF
# LiveMount end-to-end guest (tools/e2e/whole-chain.sh): Debian 12 minbase, MBR + GRUB booted by the BIOS.
name = "$vm"
machine = "pc"
memory_mib = 1024
disk0 = "$(basename "$image")"
EOF
  "$bindir/livemount" backup create --repo "$repo" --vm "$vm" --config "$work/$vm.conf" --disk "disk0=$image" \
    > "$work/backup-create.log" 2>&1 || { tail -n 20 "$work/backup-create.log" >&2; fail "backup create failed"; }
  "$bindir/livemount" backup list --repo "$repo" --vm "$vm" | tee -a "$work/backup-create.log" >&2
  note="repository $(du -sm "$repo" | cut -f1) MiB"
}

# 3. The live mount: livemountd serving the backup as LUN 0, from a generated configuration.
phase_mount() {
  start_daemon
  "$bindir/livemount" mounts | tee "$work/mounts.log" >&2
  grep -q "$target LUN 0" "$work/mounts.log" || fail "livemount mounts does not show $mount"
  note="127.0.0.1:$port, $latency ms per chunk"
}

# 4. A cold boot over iSCSI, recorded as a trace of the profile (the VM's name).
phase_boot_record() {
  "$bindir/livemount" trace record start --target "$target" --lun 0 >&2
  start_guest record boot "$timeout_s" --url "$url"
  wait_guest
  local stopped
  stopped=$("$bindir/livemount" trace record stop --target "$target" --lun 0)
  echo "  $stopped" >&2
  trace_id=$(sed -n 's/^trace \([0-9]*\) .*/\1/p' <<< "$stopped")
  [ -n "$trace_id" ] || fail "trace record stop recorded nothing: $stopped"
  "$bindir/livemount" trace show "$trace_id" > "$work/trace-show.log"
  local reads; reads=$(awk '$1 == "reads:" { print $2 }' "$work/trace-show.log")
  note="QEMU $(summary_field "$boot_summary" time) s, marker at $(serial_time "$work/serial-record.log" BOOT-OK) s;"
  note="$note trace $trace_id: $reads reads"
}

# Trains the profile's prefetch plan from the recorded boot.
phase_train() {
  "$bindir/livemount" trace train "$vm" > "$work/train.log" 2>&1 \
    || { cat "$work/train.log" >&2; fail "trace train failed"; }
  cat "$work/train.log" >&2
  "$bindir/livemount" trace plan "$vm" --limit 5 >> "$work/train.log" 2>&1 || fail "trace plan failed"
  note="$(head -n1 "$work/train.log" | grep -o '[0-9]* entries, [0-9.]* [KMG]iB' || true) from trace $trace_id"
}

# 5. The daemon restarted on an empty cache: the mount comes back with the plan, pre-stages its first seconds and
# follows it; the guest boots (in write mode: it starts writing once booted, for the next phase).
phase_boot_prefetch() {
  stop_daemon
  rm -f "$cache" "$cache.index" "$cache.index-wal" "$cache.index-shm"
  start_daemon
  rm -f "$control"
  start_guest write "write pause=$write_pause" "$((timeout_s * 3))" --url "$url" --control-serial "$control"
  wait_for_serial "$work/serial-write.log" "$BOOT_MARKER" "the boot marker"
  "$bindir/livemount" mount status --target "$target" --lun 0 > "$work/mount-status-prefetch.log" 2>&1 \
    || { cat "$work/mount-status-prefetch.log" >&2; fail "livemount mount status failed"; }
  cat "$work/mount-status-prefetch.log" >&2
  grep -q '^plan: [1-9][0-9]* extents' "$work/mount-status-prefetch.log" || fail "the mount does not follow the plan"
  note="marker at $(serial_time "$work/serial-write.log" BOOT-OK) s; $(grep -o 'precision [0-9.]*  recall [0-9.]*' \
    "$work/mount-status-prefetch.log" | tr -s ' ' || echo 'no prefetch figures')"
}

# 6. Relocation to the primary file while the guest writes: started after its first file, watched until it has
# completed and switched over, then the guest goes on writing to the primary for $after_switch more files.
phase_relocate() {
  wait_for_serial "$work/serial-write.log" "LIVEMOUNT-E2E-WROTE" "the guest's first written file"
  files_before=$(files_written "$work/serial-write.log")
  "$bindir/livemount" relocate "$mount" --to "$primary" --max-rate "$max_rate" >&2 \
    || fail "livemount relocate $mount --to $primary failed"
  local deadline=$(( $(date +%s) + timeout_s )) status phase
  while :; do
    status=$("$bindir/livemount" relocate status "$mount" --json) || fail "relocate status failed"
    phase=$(jq -r .phase <<< "$status")
    jq -c --arg t "$(date +%s.%N)" '{t: ($t | tonumber), phase, bytesDone, bytesLeft, dirtyRegions,
      rateMiB: (.rateBytesPerSecond / 1048576 | floor), backoffs}' <<< "$status" >> "$work/relocation.log"
    case "$phase" in
      completed) break ;;
      failed|cancelled) fail "relocation $phase: $(jq -r '.error // ""' <<< "$status")" ;;
    esac
    require_guest "during the relocation"
    [ "$(date +%s)" -lt "$deadline" ] || fail "relocation not completed within $timeout_s s (phase $phase)"
    sleep 2
  done
  files_at_switch=$(files_written "$work/serial-write.log")
  "$bindir/livemount" relocate status "$mount" | tee "$work/relocation-status.log" >&2
  [ "$(jq -r .verifyMismatches <<< "$status")" = 0 ] || log "note: verification copied regions again"
  [ "$files_at_switch" -gt "$files_before" ] || fail "the guest wrote no file while the relocation ran"
  # How long the copy took (until the first poll that saw verifying or later) and the rest, from the poll log.
  local times
  times=$(jq -rs '(.[0].t) as $t0 | (map(select(.phase != "copying")) | .[0].t // $t0) as $t1 | (.[-1].t) as $t2
    | "copy \($t1 - $t0 | floor) s, verify+switch \($t2 - $t1 | floor) s,"
      + " peak \(map(.dirtyRegions) | max) dirty regions"' \
    "$work/relocation.log")
  note="$times; $(( $(jq -r .bytesWritten <<< "$status") >> 20 )) MiB written, $(jq -r .verifyMismatches <<< "$status")"
  note="$note verify mismatches; guest writes: $files_before before, $(( files_at_switch - files_before )) during"
}

# 7. The guest writes $after_switch more files (to the primary now), is told to stop, syncs and powers off.
phase_shutdown() {
  local want=$(( files_at_switch + after_switch )) deadline=$(( $(date +%s) + timeout_s ))
  while [ "$(files_written "$work/serial-write.log")" -lt "$want" ]; do
    require_guest "after the switchover"
    [ "$(date +%s)" -lt "$deadline" ] || fail "the guest wrote fewer than $after_switch files after the switchover"
    sleep 0.5
  done
  python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"stop\n")' \
    "$control" || fail "cannot send stop to the guest's ttyS1 ($control)"
  wait_guest
  grep -a -q "LIVEMOUNT-E2E-WRITE-END" "$work/serial-write.log" || fail "the guest did not finish writing"
  ! grep -a "LIVEMOUNT-E2E-ERROR" "$work/serial-write.log" || fail "the guest reported an error"
  files_total=$(files_written "$work/serial-write.log")
  # The expected list: each name's last written size and SHA-256; base.bin as built when it was never patched.
  grep -a 'LIVEMOUNT-E2E-WROTE ' "$work/serial-write.log" \
    | awk '{ for (i = 1; i < NF; i++) if ($i == "LIVEMOUNT-E2E-WROTE") { size[$(i+1)] = $(i+2); sha[$(i+1)] = $(i+3) } }
           END { for (n in size) print n, size[n], sha[n] }' | sort > "$expected"
  if ! grep -q '^base.bin ' "$expected"; then
    echo "base.bin 4194304 $(sha256sum < "$LIVEMOUNT_BOOT_DIR/rootfs/var/lib/livemount-e2e/base.bin" | cut -d' ' -f1)" \
      >> "$expected"
  fi
  # After the switchover the LUN is served by the primary alone: a whole read of it is the primary file.
  local lun_sha file_sha
  lun_sha=$("$bindir/livemount" lun read "$url" 2>> "$work/lun-read.log" | grep -o '[0-9a-f]\{64\}' | head -n1)
  file_sha=$(sha256sum < "$primary" | cut -d' ' -f1)
  [ -n "$lun_sha" ] && [ "$lun_sha" = "$file_sha" ] \
    || fail "LUN 0 after the switchover ($lun_sha) differs from $primary ($file_sha)"
  stop_daemon
  note="$files_total writes in all, $(( files_total - files_at_switch )) after the switch; LUN sha256 = primary's"
}

# 8a. The primary checked offline: e2fsck finds its ext4 clean and debugfs dumps the expected files.
phase_offline_check() {
  local part="$primary?offset=1048576" name size sha dumped bad=0 n=0
  e2fsck -fn "$part" > "$work/e2fsck.log" 2>&1 \
    || { cat "$work/e2fsck.log" >&2; fail "e2fsck finds the primary's file system damaged"; }
  rm -rf "$work/dump"
  mkdir -p "$work/dump"
  debugfs -R "rdump /var/lib/livemount-e2e $work/dump" "$part" > "$work/debugfs.log" 2>&1 \
    || { cat "$work/debugfs.log" >&2; fail "debugfs cannot read the primary"; }
  while read -r name size sha; do
    n=$(( n + 1 ))
    dumped="$work/dump/livemount-e2e/$name"
    if [ ! -f "$dumped" ]; then log "missing on the primary: $name"; bad=$(( bad + 1 ))
    elif [ "$(stat -c %s "$dumped")" != "$size" ] || [ "$(sha256sum < "$dumped" | cut -d' ' -f1)" != "$sha" ]; then
      log "different on the primary: $name"; bad=$(( bad + 1 ))
    fi
  done < "$expected"
  rm -rf "$work/dump"
  [ "$bad" = 0 ] || fail "$bad of $n files differ on the primary (debugfs)"
  note="e2fsck clean; $n of $n files match (debugfs)"
}

# 8b, 9. A boot straight from the primary file (no daemon); the guest checks the expected files itself.
phase_boot_primary() {
  start_guest primary verify "$timeout_s" --image "$primary" --writable --fw-cfg-file "opt/livemount/expect=$expected"
  wait_guest
  local line
  line=$(grep -a -o 'LIVEMOUNT-E2E-VERIFY .*' "$work/serial-primary.log" | tr -d '\r' || true)
  [ -n "$line" ] || fail "the guest did not report its check"
  grep -a 'LIVEMOUNT-E2E-CHECK' "$work/serial-primary.log" | grep -v ' ok' >&2 || true
  local n ok bad
  n=$(sed -n 's/.*expected=\([0-9]*\).*/\1/p' <<< "$line")
  ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<< "$line")
  bad=$(sed -n 's/.* bad=\([0-9]*\).*/\1/p' <<< "$line")
  [ "$n" = "$(wc -l < "$expected")" ] && [ "$ok" = "$n" ] && [ "$bad" = 0 ] \
    || fail "the guest's check on the primary: $line (expected $(wc -l < "$expected") files)"
  note="boot $(summary_field "$boot_summary" time) s; guest: $ok of $n files ok"
}

# Invariant 1: the backup is unchanged by the mount, the guest's writes and the relocation.
phase_backup_verify() {
  "$bindir/livemount" backup verify --repo "$repo" > "$work/backup-verify.log" 2>&1 \
    || { cat "$work/backup-verify.log" >&2; fail "backup verify found damage"; }
  note="$(tail -n1 "$work/backup-verify.log")"
}

# MARK: - Main

log "work directory $work"
run_phase build phase_build
run_phase image phase_image
run_phase backup phase_backup
run_phase mount phase_mount
run_phase boot-record phase_boot_record
run_phase train phase_train
run_phase boot-prefetch phase_boot_prefetch
run_phase relocate phase_relocate
run_phase shutdown phase_shutdown
run_phase offline-check phase_offline_check
run_phase boot-primary phase_boot_primary
run_phase backup-verify phase_backup_verify
phase_name="done"
print_table
echo "e2e: OK"
