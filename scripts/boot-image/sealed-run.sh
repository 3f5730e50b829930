# The test disk's run.sh of `scripts/boot --sealed` (unistore.test=sealed).
# On the live system: install to-disk onto the blank /dev/vdc with the
# filesystem in ./fs. On the sealed host (booted verity-enforced): read
# a /usr file and say how it went, the kernel's fs-verity lines, and fsck.
set -e
here=/run/unistore-test
say() { echo "$1=$2"; }
if [ "$(unistore status --json | jq -r .status.booted.composefs.verityEnforced)" = true ]; then
    f=${UNISTORE_SEALED_READ:-/usr/share/common-licenses/GPL-3}
    [ ! -f "$here/read" ] || f=$(cat "$here/read")
    if cat "$f" >/dev/null 2>/tmp/read.err; then say read ok; else say read "failed: $(cat /tmp/read.err)"; fi
    dmesg | grep -i 'verity' | sed 's/^/kernel: /' | tail -n 3
    say fsck "$(unistore internals fsck --verify-content --json | jq -c '{ok, issues: [.. | objects | .issues? // empty | .[]] | unique}')"
    exit 0
fi
fs=$(cat "$here/fs")
# With scripts/boot --log: the sealed host runs this script too, then
# powers off (./kargs says --karg unistore.test=sealed).
kargs=$(cat "$here/kargs" 2>/dev/null || true)
echo "installing onto /dev/vdc ($(lsblk -dno SIZE /dev/vdc)) with $fs"
unistore install to-disk --wipe --filesystem "$fs" $kargs \
    --source-imgref oci:$here/oci:latest --target-imgref oci:$here/oci:latest /dev/vdc
