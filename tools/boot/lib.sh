# Shared helpers for tools/boot/*.sh (sourced, not run).
#
# Boot artifacts (root file system tree, disk images, kernel, initrd) live under
# $LIVEMOUNT_BOOT_DIR, by default /var/tmp/livemount-boot: large, rebuilt on demand, never in git.

LIVEMOUNT_BOOT_DIR="${LIVEMOUNT_BOOT_DIR:-/var/tmp/livemount-boot}"

# The line the guest writes to its serial console once multi-user.target is reached (see build-image.sh);
# boot.sh looks for it to tell a real boot from a failure.
BOOT_MARKER="LIVEMOUNT-BOOT-OK"

# The Debian packages the boot tools need: debootstrap builds the guest, e2fsprogs (mkfs.ext4 -d) and fdisk
# (sfdisk) lay out the disks, grub-pc-bin/grub2-common install GRUB without a device, and QEMU with
# qemu-block-extra (its iSCSI block driver, through libiscsi) boots them; boot.sh asks qemu-img (qemu-utils, only
# recommended by qemu-system-x86) whether that driver is there.
BOOT_PACKAGES=(debootstrap e2fsprogs fdisk grub-pc-bin grub2-common qemu-system-x86 qemu-block-extra qemu-utils)

# Prints a timestamped progress line on stderr.
log() { printf '%s boot: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Prints an error on stderr and exits 1.
die() { printf 'boot: error: %s\n' "$*" >&2; exit 1; }

# Installs whatever of BOOT_PACKAGES is missing (idempotent; like tools/install-deps.sh). apt only talks to
# the mirror /etc/apt/sources.list(.d) points at.
install_boot_deps() {
  local missing=() p
  for p in "${BOOT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  log "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Prints the Debian mirror the host's apt uses (first URIs:/deb line naming a debian archive that is not the
# security one), so debootstrap fetches from the same place and nowhere else.
debian_mirror() {
  local uri
  uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
        | grep -v security | grep -E '/debian/?$' | head -n1 || true)
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $2 !~ /security/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

# Prints the wall time since $1 (an `date +%s.%N` value) in seconds with two decimals.
elapsed_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }'; }

# Prints the calling script's header comment (its lines 2.. up to the first line that is not a comment) as help.
usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
