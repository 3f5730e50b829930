# Shell functions shared by scripts/build-sample-image and
# scripts/build-boot-image (sourced, not run). Expects $repo_root.

log() { echo "$(basename "$0"): $*" >&2; }
die() { log "error: $*"; exit 1; }

# The unistore-fixture binary: $UNISTORE_FIXTURE, else built with cargo.
find_fixture() {
    if [ -n "${UNISTORE_FIXTURE:-}" ]; then
        echo "$UNISTORE_FIXTURE"
        return
    fi
    local target=${CARGO_TARGET_DIR:-$repo_root/target}
    if command -v cargo >/dev/null 2>&1; then
        log "building unistore-fixture (cargo build --release -p unistore-fixtures)"
        (cd "$repo_root" && cargo build --release -q -p unistore-fixtures --bin unistore-fixture) >&2
    fi
    for candidate in "$target/release/unistore-fixture" "$target/debug/unistore-fixture"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    die "unistore-fixture not found; build it or set UNISTORE_FIXTURE"
}

# Unmounts everything mounted below $1: deepest first; lazily if busy.
unmount_under() {
    findmnt -rn -o TARGET | awk -v p="$1" 'index($0, p) == 1' | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" || true
    done
}

# Deletes paths, never through a bind mount (a chroot has the host's /dev
# bound in it).
safe_rm() {
    local p
    for p in "$@"; do
        [ -e "$p" ] || continue
        unmount_under "$p"
        if findmnt -rn -o TARGET | awk -v p="$p" 'index($0, p) == 1' | grep -q .; then
            die "refusing to delete $p: something is still mounted below it"
        fi
        rm -rf --one-file-system "$p"
    done
}

# Runs a command in the chroot $1 with /proc, /sys, /dev and the host's DNS.
# The mounts are undone afterwards, also on failure.
in_chroot() {
    local root=$1 rc=0
    shift
    mount -t proc proc "$root/proc" &&
        mount -t sysfs sysfs "$root/sys" &&
        mount --bind /dev "$root/dev" &&
        mount --bind /dev/pts "$root/dev/pts" &&
        cp -L /etc/resolv.conf "$root/etc/resolv.conf" &&
        chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@" || rc=$?
    unmount_under "$root"
    if findmnt -rn -o TARGET | awk -v p="$root" 'index($0, p) == 1' | grep -q .; then
        die "could not unmount the chroot's /proc, /sys or /dev"
    fi
    rm -f "$root/etc/resolv.conf"
    return $rc
}

# Moves /boot/vmlinuz-<kver> and /boot/initrd.img-<kver> of the rootfs $1 to
# /usr/lib/modules/<kver>/{vmlinuz,initramfs.img}, where an image carries
# them, and empties /boot. Prints <kver>.
move_kernel_to_usr() {
    local rootfs=$1 kver
    kver=$(ls "$rootfs/usr/lib/modules" | sort -V | tail -n 1)
    [ -n "$kver" ] || die "no kernel modules directory after install"
    [ -f "$rootfs/boot/vmlinuz-$kver" ] || die "no /boot/vmlinuz-$kver"
    [ -f "$rootfs/boot/initrd.img-$kver" ] || die "no /boot/initrd.img-$kver (initramfs not generated)"
    log "kernel $kver: moving vmlinuz and initrd to /usr/lib/modules/$kver/"
    mv "$rootfs/boot/vmlinuz-$kver" "$rootfs/usr/lib/modules/$kver/vmlinuz"
    mv "$rootfs/boot/initrd.img-$kver" "$rootfs/usr/lib/modules/$kver/initramfs.img"
    # The rest of /boot and the /vmlinuz-style symlinks would dangle or duplicate.
    rm -rf "$rootfs"/boot/* "$rootfs"/vmlinuz* "$rootfs"/initrd.img*
    echo "$kver"
}
