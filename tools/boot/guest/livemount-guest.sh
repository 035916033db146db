#!/bin/bash
# Installed by build-image.sh as /usr/local/sbin/livemount-guest and run by livemount-boot-done.service once
# multi-user.target is reached. It writes the boot marker on ttyS0, then does what the host asked through QEMU's
# fw_cfg (`-fw_cfg name=opt/livemount/mode,string=MODE`, read from /sys/firmware/qemu_fw_cfg, module
# qemu_fw_cfg). The disk (a backup, a live mount, a primary LUN) is never told anything: the mode comes from
# outside, so the same image serves every boot.
#
#   boot (the default, also without fw_cfg)  power off at once (what boot.sh and record-traces.sh time)
#   write [seconds=S] [pause=P]              write files into /var/lib/livemount-e2e, pausing P seconds after each
#                                            (default 0.2), until the host sends a line "stop" on the second serial
#                                            port (ttyS1, boot.sh --control-serial) or S seconds have passed (default
#                                            1800), then power off
#   verify                                   check the files named by fw_cfg opt/livemount/expect, then power off
#
# Lines on ttyS0, for the host (tools/e2e/whole-chain.sh):
#   LIVEMOUNT-BOOT-OK uptime=S
#   LIVEMOUNT-E2E-MODE mode
#   LIVEMOUNT-E2E-WROTE NAME SIZE SHA256 UPTIME   each file once it is written, fsync'ed and synced: acknowledged
#   LIVEMOUNT-E2E-WRITE-END files=N seconds=S
#   LIVEMOUNT-E2E-CHECK NAME ok|missing|size=N|sha256=HEX
#   LIVEMOUNT-E2E-VERIFY expected=N ok=N bad=N
#   LIVEMOUNT-E2E-ERROR text
set -u

console=/dev/ttyS0
dir=/var/lib/livemount-e2e
stop_file=/run/livemount-e2e-stop

say() { echo "$*" > "$console"; }

# Prints the fw_cfg item opt/livemount/NAME, or fails when QEMU did not give it.
fw_cfg() {
  local raw="/sys/firmware/qemu_fw_cfg/by_name/opt/livemount/$1/raw"
  [ -r "$raw" ] && cat "$raw"
}

# Prints the seconds since boot (two decimals).
uptime_s() { local up _; read -r up _ < /proc/uptime; echo "$up"; }

# Prints the SHA-256 of a file.
sha256() { sha256sum "$1" | cut -d' ' -f1; }

# write [seconds=S] [pause=P]: a file per iteration, in rotation over $slots names with sizes from 4 KiB to 3 MiB,
# each written with fsync and followed by sync (the directory entry too), so every WROTE line is a write the
# initiator was told is done; every fourth iteration also a 4 KiB patch of base.bin (built into the image, so its
# other blocks come from the backup).
mode_write() {
  local limit=1800 pause=0.2 slots=96 i=0 start name size offset word
  local sizes=(4096 65536 1048576 3145728 262144 12345 2097152 524288)
  for word in "$@"; do
    case "$word" in
      seconds=*) limit="${word#seconds=}" ;;
      pause=*) pause="${word#pause=}" ;;
      *) say "LIVEMOUNT-E2E-ERROR write: unknown argument '$word'"; return ;;
    esac
  done
  [[ "$limit" =~ ^[0-9]+$ ]] || { say "LIVEMOUNT-E2E-ERROR write: bad seconds '$limit'"; return; }
  [[ "$pause" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { say "LIVEMOUNT-E2E-ERROR write: bad pause '$pause'"; return; }
  mkdir -p "$dir"
  rm -f "$stop_file"
  # The stop line on ttyS1. Without a second serial port the open fails and only the time limit applies.
  if [ -e /dev/ttyS1 ]; then
    stty -F /dev/ttyS1 -echo 2>/dev/null
    (
      while read -r line < /dev/ttyS1; do
        [ "$line" = stop ] && { : > "$stop_file"; exit 0; }
      done
    ) &
  fi
  start=$(date +%s)
  while [ ! -e "$stop_file" ] && [ $(( $(date +%s) - start )) -lt "$limit" ]; do
    name=$(printf 'f-%04d' $(( i % slots )))
    size=${sizes[$(( i % ${#sizes[@]} ))]}
    if ! head -c "$size" /dev/urandom | dd of="$dir/$name" bs=64k iflag=fullblock conv=fsync status=none \
        || ! sync; then
      say "LIVEMOUNT-E2E-ERROR write of $name failed"
      break
    fi
    say "LIVEMOUNT-E2E-WROTE $name $size $(sha256 "$dir/$name") $(uptime_s)"
    if [ -f "$dir/base.bin" ] && [ $(( i % 4 )) = 3 ]; then
      offset=$(( (RANDOM * 32768 + RANDOM) % ($(stat -c %s "$dir/base.bin") / 4096) ))
      if ! head -c 4096 /dev/urandom \
          | dd of="$dir/base.bin" bs=4096 seek="$offset" conv=notrunc,fsync status=none || ! sync; then
        say "LIVEMOUNT-E2E-ERROR patch of base.bin failed"
        break
      fi
      say "LIVEMOUNT-E2E-WROTE base.bin $(stat -c %s "$dir/base.bin") $(sha256 "$dir/base.bin") $(uptime_s)"
    fi
    i=$(( i + 1 ))
    sleep "$pause"
  done
  say "LIVEMOUNT-E2E-WRITE-END files=$i seconds=$(( $(date +%s) - start ))"
}

# verify: the expected list (fw_cfg opt/livemount/expect, lines "NAME SIZE SHA256") against the files on disk.
mode_verify() {
  local expect name size sha ok=0 bad=0 n=0 actual
  if ! expect=$(fw_cfg expect); then
    say "LIVEMOUNT-E2E-ERROR verify: no fw_cfg opt/livemount/expect"
    return
  fi
  while read -r name size sha; do
    [ -n "$name" ] || continue
    n=$(( n + 1 ))
    if [ ! -f "$dir/$name" ]; then
      say "LIVEMOUNT-E2E-CHECK $name missing"; bad=$(( bad + 1 )); continue
    fi
    actual=$(stat -c %s "$dir/$name")
    if [ "$actual" != "$size" ]; then
      say "LIVEMOUNT-E2E-CHECK $name size=$actual"; bad=$(( bad + 1 )); continue
    fi
    actual=$(sha256 "$dir/$name")
    if [ "$actual" != "$sha" ]; then
      say "LIVEMOUNT-E2E-CHECK $name sha256=$actual"; bad=$(( bad + 1 )); continue
    fi
    say "LIVEMOUNT-E2E-CHECK $name ok"; ok=$(( ok + 1 ))
  done <<< "$expect"
  say "LIVEMOUNT-E2E-VERIFY expected=$n ok=$ok bad=$bad"
}

say "LIVEMOUNT-BOOT-OK uptime=$(uptime_s)"
[ -d /sys/firmware/qemu_fw_cfg ] || modprobe qemu_fw_cfg 2>/dev/null
mode=$(fw_cfg mode) || mode=boot
read -r -a words <<< "$mode"
case "${words[0]:-}" in
  boot) ;;
  write) say "LIVEMOUNT-E2E-MODE $mode"; mode_write "${words[@]:1}" ;;
  verify) say "LIVEMOUNT-E2E-MODE $mode"; mode_verify ;;
  *) say "LIVEMOUNT-E2E-ERROR unknown mode '$mode'" ;;
esac
systemctl poweroff --no-block
