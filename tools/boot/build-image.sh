#!/usr/bin/env bash
# Builds (or reuses, when present and complete) a small Debian 12 guest for real boot traces, in two forms:
#
#   disk-a.img   whole-disk ext4 (no partition table); boot it with the kernel and initrd beside it:
#                qemu-system-x86_64 -kernel vmlinuz -initrd initrd.img -append "root=/dev/sda console=ttyS0"
#   disk-b.img   MBR with one ext4 partition at 1 MiB and GRUB (i386-pc) in the MBR and the post-MBR gap, so the
#                BIOS boots GRUB from the disk itself and GRUB reads kernel and initramfs from it (over iSCSI when
#                the disk is a LUN)
#
# The guest is debootstrap --variant=minbase with systemd-sysv, udev and the Debian kernel; no network services.
# Once multi-user.target is reached it writes "LIVEMOUNT-BOOT-OK uptime=..." to ttyS0 and powers itself off, so
# a boot's time is the QEMU process's wall time (boot.sh). A mode passed by QEMU's fw_cfg (boot.sh --fw-cfg
# opt/livemount/mode=...) makes it write or check files first (guest/livemount-guest.sh, tools/e2e/whole-chain.sh).
#
# No loop device is needed: the file systems are made with `mkfs.ext4 -d ROOTFS` into plain files, the partition
# is dd'ed in at its offset, and GRUB is installed without a device (grub-mkimage, then boot.img and core.img
# written in place, as grub-bios-setup would).
#
# Usage: build-image.sh [--out DIR] [--size SIZE] [--rebuild] [--rebuild-disks]
#   --out DIR    where the artifacts go (default /var/tmp/livemount-boot)
#   --size SIZE  size of each disk image, as truncate(1) takes it (default 2G)
#   --rebuild    rebuild the root file system and both images even if they are complete
#   --rebuild-disks  rebuild both images (and GRUB) from the existing root file system (also done by itself when
#                the guest's units or guest/livemount-guest.sh changed since the images were built)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

out="$LIVEMOUNT_BOOT_DIR"
size="2G"
rebuild=0
rebuild_disks=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="${2:?--out needs a directory}"; shift 2 ;;
    --size) size="${2:?--size needs a size}"; shift 2 ;;
    --rebuild) rebuild=1; shift ;;
    --rebuild-disks) rebuild_disks=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done
[ "$(id -u)" = 0 ] || die "build-image.sh needs root (debootstrap, chroot)"

suite="bookworm"
rootfs="$out/rootfs"
rootfs_done="$rootfs/.livemount-rootfs-complete"
# One fixed file system UUID and label for both forms, so /etc/fstab and grub.cfg name the root the same way
# whichever disk (and whichever bus: IDE /dev/sda, virtio /dev/vda) it is attached as.
root_uuid="5eb00710-1e4a-4b1d-9a0e-000000000004"
root_label="lmroot"
# The partition of disk-b.img starts at sector 2048 (1 MiB), leaving sectors 1..2047 for GRUB's core.img.
part_start_sector=2048

# MARK: - Root file system

# Mounts /proc, /sys and /dev/pts inside the root file system for package scripts (update-initramfs), and
# registers their unmounting on exit.
chroot_mounts=()
mount_chroot_fs() {
  mount -t proc proc "$rootfs/proc" && chroot_mounts+=("$rootfs/proc")
  mount -t sysfs sysfs "$rootfs/sys" && chroot_mounts+=("$rootfs/sys")
  mount --bind /dev "$rootfs/dev" && chroot_mounts+=("$rootfs/dev")
}
umount_chroot_fs() {
  local i
  for ((i=${#chroot_mounts[@]}-1; i>=0; i--)); do umount -l "${chroot_mounts[$i]}" 2>/dev/null || true; done
  chroot_mounts=()
}
trap umount_chroot_fs EXIT

# Writes the guest configuration the kernel's installation depends on: initramfs (ext4, the disk drivers QEMU's pc
# machine needs), fstab, hostname, and a fixed machine-id (every boot is the same boot, never a "first boot").
configure_rootfs() {
  local conf="$rootfs/etc/initramfs-tools/initramfs.conf"
  # FSTYPE=ext4 or mkinitramfs cannot tell the root's type inside a chroot and leaves fsck.ext4 out;
  # MODULES=list with an explicit list: the build host's own devices say nothing about the guest's.
  sed -i -e 's/^MODULES=.*/MODULES=list/' -e 's/^#\{0,1\}FSTYPE=.*/FSTYPE=ext4/' "$conf"
  grep -q '^FSTYPE=ext4' "$conf" || echo 'FSTYPE=ext4' >> "$conf"
  cat > "$rootfs/etc/initramfs-tools/modules" <<'EOF'
# Disk drivers for QEMU's pc machine (IDE through ata_piix, AHCI, virtio) and the root file system.
libata
ata_piix
ata_generic
ahci
sd_mod
virtio_pci
virtio_blk
virtio_scsi
crc32c_generic
ext4
EOF
  echo "livemount-guest" > "$rootfs/etc/hostname"
  printf '127.0.0.1\tlocalhost\n127.0.1.1\tlivemount-guest\n' > "$rootfs/etc/hosts"
  echo "UUID=$root_uuid / ext4 errors=remount-ro 0 1" > "$rootfs/etc/fstab"
  echo "4c4d6f756e74477565737400000000a4" > "$rootfs/etc/machine-id"
}

# Writes the guest's systemd setup (idempotent, applied on every run so that image rebuilds pick up changes):
# - multi-user.target as the default (no graphical.target in a server guest);
# - the unit that marks the end of the boot on the serial console and powers off: it runs guest/livemount-guest.sh
#   (installed as /usr/local/sbin/livemount-guest), which without a mode from QEMU's fw_cfg does just that, and
#   with one (opt/livemount/mode: write, verify) writes or checks files first for tools/e2e/whole-chain.sh;
# - qemu_fw_cfg loaded at boot (modules-load.d), so /sys/firmware/qemu_fw_cfg shows the host's mode;
# - /var/lib/livemount-e2e/base.bin, 4 MiB of random data made once, that the write mode patches in place (so some
#   of the guest's writes land on blocks the backup has data for);
# - e2scrub_reap.service masked: it looks for stale LVM snapshots of ext4 file systems (the guest has no LVM) and
#   under TCG spends 20-40 s of CPU at every boot doing so, which would dominate the boot's time without reading
#   the disk.
configure_units() {
  ln -sf /lib/systemd/system/multi-user.target "$rootfs/etc/systemd/system/default.target"
  ln -sf /dev/null "$rootfs/etc/systemd/system/e2scrub_reap.service"
  install -m 0755 "$here/guest/livemount-guest.sh" "$rootfs/usr/local/sbin/livemount-guest"
  echo qemu_fw_cfg > "$rootfs/etc/modules-load.d/livemount.conf"
  mkdir -p "$rootfs/var/lib/livemount-e2e"
  [ -f "$rootfs/var/lib/livemount-e2e/base.bin" ] \
    || head -c 4194304 /dev/urandom > "$rootfs/var/lib/livemount-e2e/base.bin"
  cat > "$rootfs/etc/systemd/system/livemount-boot-done.service" <<EOF
[Unit]
Description=LiveMount boot trace: mark the end of the boot on ttyS0, do the host's fw_cfg mode, power off
After=multi-user.target

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/usr/local/sbin/livemount-guest

[Install]
WantedBy=multi-user.target
EOF
  mkdir -p "$rootfs/etc/systemd/system/multi-user.target.wants"
  ln -sf ../livemount-boot-done.service "$rootfs/etc/systemd/system/multi-user.target.wants/livemount-boot-done.service"
}

# Prints a digest of what configure_units put into the root file system. Each disk's ".complete" stamp holds the
# digest it was built with, so a change to the guest's units or script rebuilds the disks without --rebuild-disks.
guest_config_digest() {
  (cd "$rootfs" && cat etc/systemd/system/livemount-boot-done.service usr/local/sbin/livemount-guest \
    etc/modules-load.d/livemount.conf var/lib/livemount-e2e/base.bin) | sha256sum | cut -d' ' -f1
}

# Whether the disk whose stamp is $1 is complete and current (same root file system, same guest configuration).
disk_current() {
  [ "$rebuild" = 0 ] && [ "$rebuild_disks" = 0 ] && [ -f "$1" ] && [ "$1" -nt "$rootfs_done" ] \
    && [ "$(cat "$1")" = "$(guest_config_digest)" ]
}

# Builds the root file system tree with debootstrap (minbase + systemd-sysv, udev, initramfs-tools), configures
# it, then installs the kernel, whose postinst builds the initramfs with that configuration.
build_rootfs() {
  if [ "$rebuild" = 0 ] && [ -f "$rootfs_done" ]; then
    log "reusing root file system $rootfs"
    return 0
  fi
  local mirror start
  mirror="$(debian_mirror)"
  start=$(date +%s.%N)
  umount_chroot_fs
  rm -rf "$rootfs"
  mkdir -p "$out"
  log "debootstrap $suite (minbase) from $mirror into $rootfs"
  debootstrap --variant=minbase --include=systemd-sysv,udev,initramfs-tools,kmod "$suite" "$rootfs" "$mirror" \
    > "$out/debootstrap.log" 2>&1 || { tail -n 30 "$out/debootstrap.log" >&2; die "debootstrap failed"; }
  configure_rootfs
  mount_chroot_fs
  log "installing linux-image-amd64 in the guest"
  printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"; chmod +x "$rootfs/usr/sbin/policy-rc.d"
  chroot "$rootfs" /usr/bin/env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends linux-image-amd64 > "$out/kernel-install.log" 2>&1 \
    || { tail -n 30 "$out/kernel-install.log" >&2; die "installing the kernel failed"; }
  chroot "$rootfs" apt-get clean
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  umount_chroot_fs
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/tmp/* "$rootfs"/var/log/*.log
  touch "$rootfs_done"
  log "root file system ready in $(elapsed_since "$start") s ($(du -sh "$rootfs" | cut -f1))"
}

# Prints the guest kernel's version (the one linux-image-amd64 installed).
kernel_version() {
  local k
  k=$(ls "$rootfs"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)
  [ -n "$k" ] || die "no kernel in $rootfs/boot"
  basename "$k" | sed 's/^vmlinuz-//'
}

# Puts GRUB's modules and a grub.cfg into the root file system's /boot/grub (GRUB loads normal.mod, linux.mod
# and the rest from there at boot: core.img only carries what it needs to find them). Harmless in disk-a.img.
install_grub_files() {
  local kver
  kver="$(kernel_version)"
  mkdir -p "$rootfs/boot/grub/i386-pc"
  cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$rootfs/boot/grub/i386-pc/"
  cat > "$rootfs/boot/grub/grub.cfg" <<EOF
# LiveMount boot-trace guest: boot at once; GRUB talks on the serial line (QEMU -nographic shows no VGA).
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
set default=0
echo "LIVEMOUNT-GRUB loading $kver"
menuentry "Debian GNU/Linux ($kver)" {
  insmod ext2
  linux /boot/vmlinuz-$kver root=UUID=$root_uuid ro console=ttyS0 panic=1
  initrd /boot/initrd.img-$kver
}
EOF
}

# MARK: - Disk images

# Makes an ext4 file system of the given size from the root file system tree into FILE (no loop device).
make_ext4() {
  local file="$1" bytes="$2"
  rm -f "$file"
  truncate -s "$bytes" "$file"
  mkfs.ext4 -q -F -L "$root_label" -U "$root_uuid" -d "$rootfs" "$file"
}

# Form (a): the whole disk is the ext4 file system; the kernel and initrd are copied beside it.
build_disk_a() {
  local img="$out/disk-a.img" done="$out/disk-a.img.complete" kver start
  if disk_current "$done"; then
    log "reusing $img"; return 0
  fi
  start=$(date +%s.%N)
  rm -f "$done"
  kver="$(kernel_version)"
  cp "$rootfs/boot/vmlinuz-$kver" "$out/vmlinuz"
  cp "$rootfs/boot/initrd.img-$kver" "$out/initrd.img"
  make_ext4 "$img" "$size"
  guest_config_digest > "$done"
  log "disk-a.img ready in $(elapsed_since "$start") s (kernel $kver, $out/vmlinuz, $out/initrd.img)"
}

# Writes LEN bytes of FILE's content (hex string HEX) at byte OFFSET of the image, in place.
poke_hex() {
  local img="$1" offset="$2" hex="$3"
  printf "$(echo "$hex" | sed 's/../\\x&/g')" | dd of="$img" bs=1 seek="$offset" conv=notrunc status=none
}

# Prints LEN bytes at OFFSET of FILE as a little-endian unsigned integer.
peek_le() {
  local file="$1" offset="$2" len="$3"
  od -An -tu"$len" -j "$offset" -N "$len" --endian=little "$file" | tr -d ' '
}

# Installs GRUB i386-pc into the image without a device, doing what grub-bios-setup does for an MBR disk whose
# first partition starts at sector 2048:
# - core.img (diskboot.img + lzma_decompress.img + kernel and modules) from grub-mkimage at sector 1: diskboot's
#   blocklist (its last 12 bytes: start LBA u64, sector count u16, segment u16; grub-core/boot/i386/pc/diskboot.S)
#   must load the rest of core.img from sector 2 onwards, which is grub-mkimage's default start (2) and length;
# - the first 440 bytes of boot.img into the MBR (the partition table at 446.. stays), with the LBA of core.img
#   at GRUB_BOOT_MACHINE_KERNEL_SECTOR (0x5c, u64) and the boot-drive check at GRUB_BOOT_MACHINE_DRIVE_CHECK
#   (0x66) replaced by two NOPs, as grub-bios-setup does for hard disks (grub-core/boot/i386/pc/boot.S,
#   util/setup.c).
install_grub_mbr() {
  local img="$1" core="$out/core.img" core_bytes core_sectors start len segment
  grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -p "(hd0,msdos1)/boot/grub" -o "$core" \
    biosdisk part_msdos ext2
  core_bytes=$(stat -c %s "$core")
  core_sectors=$(( (core_bytes + 511) / 512 ))
  [ "$core_sectors" -lt "$part_start_sector" ] \
    || die "core.img ($core_bytes bytes) does not fit between the MBR and the partition"
  start=$(peek_le "$core" 500 8); len=$(peek_le "$core" 508 2); segment=$(peek_le "$core" 510 2)
  [ "$start" = 2 ] || die "core.img blocklist starts at sector $start, expected 2"
  [ "$len" = $((core_sectors - 1)) ] \
    || die "core.img blocklist loads $len sectors, expected $((core_sectors - 1)) (core.img is $core_bytes bytes)"
  [ "$segment" = $((0x820)) ] || die "core.img blocklist segment is $segment, expected 0x820"
  dd if="$core" of="$img" bs=512 seek=1 conv=notrunc status=none
  dd if=/usr/lib/grub/i386-pc/boot.img of="$img" bs=440 count=1 conv=notrunc status=none
  poke_hex "$img" $((0x5c)) "0100000000000000"
  poke_hex "$img" $((0x66)) "9090"
  log "GRUB: core.img $core_bytes bytes at sectors 1..$core_sectors, blocklist start=$start len=$len"
}

# Form (b): MBR partition table with one bootable Linux partition at sector 2048, the ext4 file system dd'ed in
# at that offset, GRUB in the MBR and the gap.
build_disk_b() {
  local img="$out/disk-b.img" done="$out/disk-b.img.complete" part="$out/part-b.ext4" start total part_bytes
  if disk_current "$done"; then
    log "reusing $img"; return 0
  fi
  start=$(date +%s.%N)
  rm -f "$done" "$img"
  truncate -s "$size" "$img"
  total=$(stat -c %s "$img")
  part_bytes=$(( total - part_start_sector * 512 ))
  sfdisk --quiet "$img" <<EOF
label: dos
start=$part_start_sector, type=83, bootable
EOF
  install_grub_files
  make_ext4 "$part" "$part_bytes"
  dd if="$part" of="$img" bs=1M seek=$((part_start_sector * 512)) oflag=seek_bytes conv=notrunc,sparse \
    status=none
  rm -f "$part"
  install_grub_mbr "$img"
  guest_config_digest > "$done"
  log "disk-b.img ready in $(elapsed_since "$start") s"
}

install_boot_deps
build_rootfs
configure_units
build_disk_a
build_disk_b
ls -ls "$out"/disk-a.img "$out"/disk-b.img "$out"/vmlinuz "$out"/initrd.img
