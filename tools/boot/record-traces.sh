#!/usr/bin/env bash
# Real boot traces: backs the boot-trace guest (build-image.sh) up into a repository, live-mounts it with
# livemountd (SSD-tier cache, injected repository latency) and boots it with QEMU over iSCSI (boot.sh), once per
# step. Each phase is a function that prints its wall time.
#
# Usage: record-traces.sh [options] [STEP...]
#   STEP is one of (default: backup cold):
#     backup   back the image up (skipped when the repository already has a backup of --vm)
#     cold     boot with an empty cache and a fresh overlay: every first read waits on the repository
#     cached   boot with the cache kept from the previous steps, after reading the whole LUN once through the
#              daemon so that every chunk is cached (fully cached), and a fresh overlay
#     train    livemount trace train VM: build the prefetch plan from the recorded boots (needs --record)
#     trained  like cold (empty cache, fresh overlay); the mount prefetches with the profile's plan
#   --form a|b         a: whole-disk ext4 + local -kernel/-initrd; b: MBR + GRUB, BIOS boots the LUN (default b)
#   --image FILE       the disk image (default: disk-FORM.img in the boot directory)
#   --work DIR         repository, cache, state dir, logs (default /var/tmp/livemount-boot/work-FORM)
#   --vm NAME          VM name and trace profile (default boot-FORM)
#   --latency MS       latency injected per chunk read from the repository (default 20)
#   --cache-size SIZE  cache size (default 4G)
#   --record SECONDS   record the first SECONDS of every boot (LUN option record=SECONDS) into STATE/traces.sqlite
#   --bin DIR          where livemountd and livemount are (default: the worktree's .build/debug, built if missing)
#   --timeout SEC      per-boot timeout (default 900)
#
# The guest's writes go to the mount's overlay, which is discarded before every boot (the state directory's
# mounts/ is removed), so every boot starts from the backup as it was taken. STATE itself, with the trace store,
# is kept across steps.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

form="b" image="" work="" vm="" latency=20 cache_size="4G" record="" bin="" timeout_s=900
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --form) form="${2:?--form needs a or b}"; shift 2 ;;
    --image) image="${2:?--image needs a file}"; shift 2 ;;
    --work) work="${2:?--work needs a directory}"; shift 2 ;;
    --vm) vm="${2:?--vm needs a name}"; shift 2 ;;
    --latency) latency="${2:?--latency needs milliseconds}"; shift 2 ;;
    --cache-size) cache_size="${2:?--cache-size needs a size}"; shift 2 ;;
    --record) record="${2:?--record needs seconds}"; shift 2 ;;
    --bin) bin="${2:?--bin needs a directory}"; shift 2 ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    backup|cold|cached|train|trained) steps+=("$1"); shift ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ ${#steps[@]} -gt 0 ] || steps=(backup cold)
case "$form" in a|b) ;; *) die "--form $form: expected a or b" ;; esac
[[ "$latency" =~ ^[0-9]+$ ]] || die "--latency $latency: expected whole milliseconds"
[ -z "$record" ] || [[ "$record" =~ ^[0-9]+$ ]] || die "--record $record: expected whole seconds"
image="${image:-$LIVEMOUNT_BOOT_DIR/disk-$form.img}"
work="${work:-$LIVEMOUNT_BOOT_DIR/work-$form}"
vm="${vm:-boot-$form}"
[ -f "$image" ] || die "$image does not exist: run tools/boot/build-image.sh first"

repo="$work/repository"
cache="$work/cache.img"
state="$work/state"
socket="$state/control.sock"
target="iqn.2026-11.org.example:$vm"
mkdir -p "$work" "$state"

daemon_pid=""
port=""
# Stops the daemon this script started (by its pid) when the script ends, however it ends.
cleanup() { [ -z "$daemon_pid" ] || stop_daemon; }
trap cleanup EXIT

# MARK: - Phases

# Builds livemountd and livemount unless --bin names where they are.
phase_build() {
  if [ -n "$bin" ]; then
    [ -x "$bin/livemountd" ] && [ -x "$bin/livemount" ] || die "--bin $bin: no livemountd and livemount there"
    return 0
  fi
  bin="$root/.build/debug"
  local start; start=$(date +%s.%N)
  (cd "$root" && swift build --product livemountd >&2 && swift build --product livemount >&2)
  log "phase build: $(elapsed_since "$start") s"
}

# Backs the image up as disk0 of VM $vm, with a small VM configuration file that says how it boots.
phase_backup() {
  local start; start=$(date +%s.%N)
  if "$bin/livemount" backup list --repo "$repo" --vm "$vm" 2>/dev/null | grep -q .; then
    log "phase backup: the repository already has a backup of $vm, kept"
    return 0
  fi
  local conf="$work/$vm.conf"
  cat > "$conf" <<EOF
# Boot-trace guest for LiveMount (tools/boot): Debian 12 minbase, form $form.
name = "$vm"
machine = "pc"
memory_mib = 1024
disk0 = "$(basename "$image")"
EOF
  "$bin/livemount" backup create --repo "$repo" --vm "$vm" --config "$conf" --disk "disk0=$image" >&2
  log "phase backup: $(elapsed_since "$start") s"
}

# Starts livemountd serving backup:$vm as LUN 0 on a free 127.0.0.1 port; with "cold" the cache is emptied first.
# The overlay (STATE/mounts) is always discarded so the guest starts from the backup.
start_daemon() {
  local mode="$1" lun="0=backup:$vm" start
  start=$(date +%s.%N)
  rm -rf "$state/mounts"
  if [ "$mode" = cold ]; then rm -f "$cache" "$cache.index" "$cache.index-wal" "$cache.index-shm"; fi
  # The cached step's whole-LUN read is not a boot: it is never recorded.
  [ -z "$record" ] || [ "$mode" = warmup ] || lun="$lun,record=$record"
  "$bin/livemountd" --listen 127.0.0.1:0 --target "$target" --repo "$repo" --cache "$cache,$cache_size" \
    --repo-latency "$latency" --state-dir "$state" --control-socket "$socket" --lun "$lun" \
    > "$work/livemountd.out" 2>> "$work/livemountd.log" &
  daemon_pid=$!
  local _
  for _ in $(seq 600); do
    port=$(sed -n 's/^livemountd: listening on 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$work/livemountd.out")
    [ -n "$port" ] && break
    kill -0 "$daemon_pid" 2>/dev/null || { daemon_pid=""; tail -n 20 "$work/livemountd.log" >&2; die "livemountd exited"; }
    sleep 0.1
  done
  [ -n "$port" ] || die "livemountd did not report a listening port"
  log "livemountd ($mode cache, ${latency} ms per chunk) pid $daemon_pid on 127.0.0.1:$port, ready in $(elapsed_since "$start") s"
}

# Stops the daemon started by start_daemon (SIGTERM, graceful) and waits for it.
stop_daemon() {
  [ -n "$daemon_pid" ] || return 0
  kill -TERM "$daemon_pid" 2>/dev/null || true
  wait "$daemon_pid" 2>/dev/null || true
  daemon_pid=""
}

# Boots the guest from LUN 0 of the running daemon and prints boot.sh's summary line.
boot_guest() {
  local label="$1" url="iscsi://127.0.0.1:$port/$target/0" args=()
  if [ "$form" = a ]; then
    args=(--kernel "$LIVEMOUNT_BOOT_DIR/vmlinuz" --initrd "$LIVEMOUNT_BOOT_DIR/initrd.img")
  fi
  local result
  result=$("$here/boot.sh" --url "$url" --timeout "$timeout_s" --serial-log "$work/serial-$label.log" "${args[@]}") \
    || { echo "$result"; die "boot ($label) failed"; }
  echo "$result" | sed "s/^boot:/boot ($label):/"
}

# Cold boot: empty cache, every first read of a chunk waits on the repository.
phase_cold() {
  start_daemon cold
  boot_guest cold
  stop_daemon
}

# Fully cached boot: the whole LUN is read once through the daemon (filling the cache), then the guest boots.
phase_cached() {
  start_daemon warmup
  local start; start=$(date +%s.%N)
  "$bin/livemount" lun read --no-sha256 "iscsi://127.0.0.1:$port/$target/0" >&2
  log "cache warmed (whole LUN read) in $(elapsed_since "$start") s"
  stop_daemon
  start_daemon keep
  boot_guest cached
  stop_daemon
}

# Trains the profile's prefetch plan from the boots recorded so far.
phase_train() {
  local start; start=$(date +%s.%N)
  [ -n "$record" ] || log "warning: train without --record: only traces recorded earlier are used"
  "$bin/livemount" trace train "$vm" --traces-db "$state/traces.sqlite" >&2
  "$bin/livemount" trace plan "$vm" --limit 10 --traces-db "$state/traces.sqlite" >&2 || true
  log "phase train: $(elapsed_since "$start") s"
}

# Boot with an empty cache and the trained plan (the mount prefetches when its profile has one).
phase_trained() {
  start_daemon cold
  boot_guest trained
  "$bin/livemount" mount status --target "$target" --lun 0 --socket "$socket" >&2 || true
  stop_daemon
}

# MARK: - Main

phase_build
for step in "${steps[@]}"; do
  step_start=$(date +%s.%N)
  "phase_$step"
  log "step $step done in $(elapsed_since "$step_start") s"
done
