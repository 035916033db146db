#!/usr/bin/env bash
# Boots the boot-trace guest (build-image.sh) once under QEMU, software emulation only (TCG: KVM does not work
# on these machines), and prints the boot time: the QEMU process's wall time, from its start until the guest has
# reached multi-user.target, written its marker on ttyS0 and powered itself off.
#
# Usage: boot.sh (--image FILE | --url iscsi://127.0.0.1:PORT/IQN/LUN) [options]
#   --image FILE       boot a local disk image (opened with -snapshot unless --writable: the image stays as built)
#   --url URL          boot an iSCSI LUN through QEMU's iSCSI driver (libiscsi, package qemu-block-extra)
#   --kernel K         direct kernel boot (form a, whole-disk ext4): -kernel K -initrd I -append "root=... ..."
#   --initrd I         initrd for --kernel
#   --root DEV         root= for --kernel (default /dev/vda for --if virtio, /dev/sda for --if ide)
#   --append TEXT      extra kernel arguments for --kernel
#   --if virtio|ide    disk interface (default virtio: SeaBIOS and GRUB read a virtio disk several times faster
#                      than an IDE one under TCG, which only has PIO)
#   --timeout SEC      give up after SEC seconds (default 600)
#   --serial-log FILE  keep the guest's serial output there (default: a temporary file, removed on success)
#   --writable         let the guest write to --image (default: -snapshot)
#   --snapshot         use -snapshot with --url too (writes stay in a local temporary overlay)
#   --fw-cfg NAME=TEXT       pass TEXT to the guest as fw_cfg item NAME (-fw_cfg name=NAME,string=TEXT), e.g.
#                            opt/livemount/mode=write (guest/livemount-guest.sh); repeatable
#   --fw-cfg-file NAME=FILE  the same with a file's contents (-fw_cfg name=NAME,file=FILE); repeatable
#   --control-serial SOCKET  a second serial port (the guest's ttyS1) on a Unix socket QEMU listens on, for the
#                            host to send the guest lines (the write mode stops on "stop")
#
# Without --kernel the BIOS boots the disk itself (form b: GRUB in the MBR). Prints one summary line
#   boot: OK time=28.41s guest-uptime=22.37s marker=yes source=...
# and one line of milestones (wall seconds since QEMU started at which GRUB started the kernel, the kernel's
# banner, /init, the root mount and systemd appeared on the serial line; every log line carries that time too)
# and exits 0, or prints the reason and the tail of the serial log and exits 1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

image="" url="" kernel="" initrd="" root="" append="" iface="virtio" timeout_s=600 serial_log="" writable=0
snapshot=0 control_serial=""
fw_cfg_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --image) image="${2:?--image needs a file}"; shift 2 ;;
    --url) url="${2:?--url needs an iscsi:// URL}"; shift 2 ;;
    --kernel) kernel="${2:?--kernel needs a file}"; shift 2 ;;
    --initrd) initrd="${2:?--initrd needs a file}"; shift 2 ;;
    --root) root="${2:?--root needs a device}"; shift 2 ;;
    --append) append="${2:?--append needs text}"; shift 2 ;;
    --if) iface="${2:?--if needs ide or virtio}"; shift 2 ;;
    --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
    --serial-log) serial_log="${2:?--serial-log needs a file}"; shift 2 ;;
    --writable) writable=1; shift ;;
    --snapshot) snapshot=1; shift ;;
    --fw-cfg|--fw-cfg-file)
      item="${2:?$1 needs NAME=VALUE}"
      [[ "$item" =~ ^opt/[^=,]+=.+$ ]] || die "$1 $item: expected NAME=VALUE with NAME starting with opt/"
      value="${item#*=}"
      if [ "$1" = --fw-cfg-file ]; then
        [ -f "$value" ] || die "$1 $item: no such file"
        fw_cfg_args+=(-fw_cfg "name=${item%%=*},file=${value//,/,,}")
      else
        fw_cfg_args+=(-fw_cfg "name=${item%%=*},string=${value//,/,,}")
      fi
      shift 2 ;;
    --control-serial) control_serial="${2:?--control-serial needs a socket path}"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# MARK: - Checks

if [ -n "$image" ] && [ -n "$url" ]; then die "give --image or --url, not both"; fi
if [ -z "$image" ] && [ -z "$url" ]; then die "give --image FILE or --url iscsi://HOST:PORT/IQN/LUN (see --help)"; fi
case "$iface" in ide|virtio) ;; *) die "--if $iface: expected ide or virtio" ;; esac
[[ "$timeout_s" =~ ^[0-9]+$ ]] || die "--timeout $timeout_s: expected whole seconds"
if [ -n "$kernel" ]; then
  [ -f "$kernel" ] || die "--kernel $kernel: no such file"
  [ -n "$initrd" ] || die "--kernel needs --initrd"
  [ -f "$initrd" ] || die "--initrd $initrd: no such file"
elif [ -n "$initrd" ] || [ -n "$root" ] || [ -n "$append" ]; then
  die "--initrd, --root and --append only go with --kernel"
fi
command -v qemu-system-x86_64 >/dev/null \
  || die "qemu-system-x86_64 not found: install qemu-system-x86 (tools/boot/build-image.sh installs it)"

if [ -n "$image" ]; then
  [ -f "$image" ] || die "--image $image: no such file"
  drive="file=$image,format=raw"
  source_desc="$image"
  [ "$writable" = 1 ] || snapshot=1
else
  [[ "$url" =~ ^iscsi://[^/]+/[^/]+/[0-9]+$ ]] || die "--url $url: expected iscsi://HOST:PORT/IQN/LUN"
  host="${url#iscsi://}"; host="${host%%/*}"; host="${host%%:*}"
  [ "$host" = "127.0.0.1" ] || [ "$host" = "localhost" ] || die "--url $url: only 127.0.0.1 is allowed here"
  # QEMU's iSCSI block driver is a loadable module shipped by qemu-block-extra.
  if ! qemu-img --help 2>/dev/null | grep -A2 '^Supported formats' | grep -qw iscsi; then
    die "QEMU has no iSCSI driver (block-iscsi.so): apt-get install qemu-block-extra"
  fi
  drive="file=$url,format=raw"
  source_desc="$url"
fi
# cache=none: no host page cache between the guest and its disk (O_DIRECT for a file; for iSCSI every guest
# read goes to the target), so boot times measure the disk. Files on a file system without O_DIRECT fall back.
cache="none"
if [ -n "$image" ] && ! dd if="$image" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null; then
  cache="writeback"
fi
if [ "$iface" = ide ]; then
  drive_args=(-drive "$drive,if=ide,cache=$cache")
else
  drive_args=(-drive "$drive,if=virtio,cache=$cache")
fi

qemu=(qemu-system-x86_64 -machine pc,accel=tcg -cpu max -m 1024 -smp 1 -nographic -vga none
      -no-reboot -nic none "${drive_args[@]}")
[ "$snapshot" = 1 ] && qemu+=(-snapshot)
qemu+=("${fw_cfg_args[@]}")
# -nographic puts the first serial port on stdio only when no -serial is given: name both.
[ -z "$control_serial" ] || qemu+=(-serial mon:stdio -serial "unix:${control_serial//,/,,},server=on,wait=off")
if [ -n "$kernel" ]; then
  if [ -z "$root" ]; then
    if [ "$iface" = ide ]; then root=/dev/sda; else root=/dev/vda; fi
  fi
  # panic=1 with -no-reboot: a kernel panic, or initramfs-tools failing to find the root, ends QEMU at once
  # instead of waiting in a rescue shell until the timeout.
  qemu+=(-kernel "$kernel" -initrd "$initrd" -append "root=$root ro console=ttyS0 panic=1 $append")
fi

# MARK: - Boot

keep_log=1
if [ -z "$serial_log" ]; then
  serial_log="$(mktemp /tmp/livemount-boot-serial.XXXXXX)"
  keep_log=0
fi
log "booting $source_desc: ${qemu[*]}"
# Prefixes every line of QEMU's output with the seconds since QEMU started, so the log shows where a boot spends
# its time (BIOS and GRUB before the kernel's own clock starts).
# Pure bash (no process per line, which would take CPU from QEMU): times in microseconds from $EPOCHREALTIME.
stamp_lines() {
  local t0="${1/./}" line now us
  while IFS= read -r line || [ -n "$line" ]; do
    now="${EPOCHREALTIME/./}"
    us=$(( now - t0 ))
    printf '%5d.%02d %s\n' $(( us / 1000000 )) $(( us % 1000000 / 10000 )) "${line//$'\r'/}"
  done
}

start=$(date +%s.%N)
set +e
timeout --foreground -k 10 "$timeout_s" "${qemu[@]}" < /dev/null 2>&1 | stamp_lines "$EPOCHREALTIME" > "$serial_log"
rc=${PIPESTATUS[0]}
set -e
boot_time="$(elapsed_since "$start")"

# Prints the wall time (seconds since QEMU started) of the first serial line matching the pattern, or "-".
milestone() { awk -v pattern="$1" '$0 ~ pattern { print $1; found = 1; exit } END { if (!found) print "-" }' "$serial_log"; }
milestones="grub=$(milestone 'Booting `') kernel=$(milestone 'Linux version') init=$(milestone 'Run /init')"
milestones="$milestones root=$(milestone 'EXT4-fs .*mounted') systemd=$(milestone 'systemd.*running in system mode')"

marker_line="$(grep -a -m1 "$BOOT_MARKER" "$serial_log" || true)"
uptime="$(sed -n 's/.*uptime=\([0-9.]*\).*/\1/p' <<< "$marker_line" | tr -d '\r')"
if [ "$rc" = 0 ] && [ -n "$marker_line" ]; then
  echo "boot: OK time=${boot_time}s guest-uptime=${uptime}s marker=yes source=$source_desc"
  echo "boot: milestones (s since QEMU start): $milestones"
  [ "$keep_log" = 1 ] || rm -f "$serial_log"
  exit 0
fi
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then reason="timed out after ${timeout_s}s"; else reason="qemu exited $rc"; fi
marker="no"; [ -n "$marker_line" ] && marker="yes"
echo "boot: FAILED ($reason) time=${boot_time}s marker=$marker source=$source_desc; serial log $serial_log:"
echo "boot: milestones (s since QEMU start): $milestones"
tail -n 25 "$serial_log" | sed 's/^/    /'
exit 1
