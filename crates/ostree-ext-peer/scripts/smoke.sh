#!/usr/bin/env bash
# Smoke run of ostree-ext-peer against real repos: every subcommand, plus the
# facts docs/ostree-ext-layout.md states as "confirmed by a run".
# Needs (Debian 12): ostree, skopeo, docker-registry, python3; run as root.
# usage: crates/ostree-ext-peer/scripts/smoke.sh [WORKDIR]   (default: a fresh mktemp dir)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
crate=$(dirname "$here")
W=${1:-$(mktemp -d /tmp/oep-smoke.XXXXXX)}
mkdir -p "$W"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$(cd "$crate/../.." && pwd)/target}
cargo build --quiet --manifest-path "$crate/Cargo.toml"
P="$CARGO_TARGET_DIR/debug/ostree-ext-peer"

fail() { echo "FAIL: $*" >&2; exit 1; }
jget() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1"; }

# A registry on loopback only, on a free port; stopped by its own pid on exit.
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$W/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $W/registry-data}}
http: {addr: 127.0.0.1:$PORT}
YML
docker-registry serve "$W/registry.yml" > "$W/registry.log" 2>&1 &
REG_PID=$!
trap 'kill $REG_PID 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PORT/v2/" >/dev/null && break; sleep 0.1; done
R=127.0.0.1:$PORT/probe/os
push() { skopeo copy -q --dest-tls-verify=false "oci:$W/oci:$1" "docker://$R:$2"; }

# v1: a bootable ostree commit, encapsulated by ostree-ext itself.
cd "$W"
rm -rf src rootfs oci && ostree --repo=src init --mode=bare
mkdir -p rootfs/usr/bin rootfs/usr/etc rootfs/usr/lib/modules/6.1.0-probe rootfs/usr/share/empty
echo 'echo hello' > rootfs/usr/bin/hello && chmod 755 rootfs/usr/bin/hello
echo 'a=1' > rootfs/usr/etc/foo.conf
ln -s ../lib/libx.so rootfs/usr/bin/libx-link
head -c 200000 /dev/urandom > rootfs/usr/lib/libx.so
: > rootfs/usr/lib/empty-file
echo keep > rootfs/usr/share/empty/keep
echo ID=probe > rootfs/usr/lib/os-release   # libostree reads it when deploying
echo kernel > rootfs/usr/lib/modules/6.1.0-probe/vmlinuz
echo initrd > rootfs/usr/lib/modules/6.1.0-probe/initramfs.img
BASE=$(ostree --repo=src commit --branch=probe/os -s "probe v1" \
  --add-metadata-string=version=1.0 --add-metadata=ostree.bootable=true rootfs)
"$P" cli container encapsulate --repo src probe/os "oci:$W/oci:v1" >/dev/null

# v2 = v1 + one derived (non-ostree) layer; v3 = v1 + another one.
rm -rf l2 l3 && mkdir -p l2/etc l2/usr/bin l2/usr/share l2/var/lib/probe l2/tmp l2/run l2/opt l2/boot l3/usr/lib
echo new > l2/etc/new.conf; echo 'echo hello v2' > l2/usr/bin/hello; chmod 755 l2/usr/bin/hello
: > l2/usr/bin/.wh.libx-link; : > l2/usr/share/.wh..wh..opq; echo n > l2/usr/share/newfile
echo s > l2/var/lib/probe/state; echo j > l2/tmp/junk; echo j > l2/run/junk; echo o > l2/opt/thing; echo b > l2/boot/x
echo three > l3/usr/lib/three
python3 "$here/add_layer.py" oci v1 v2 l2 org.opencontainers.image.version=2.0 >/dev/null
python3 "$here/add_layer.py" oci v1 v3 l3 org.opencontainers.image.version=3.0 >/dev/null
for t in v1 v2 v3; do push $t $t; done
push v1 latest

# Pull v1 into a fresh bare repo; the image ref name and the base layer commit.
rm -rf dst && ostree --repo=dst init --mode=bare
"$P" cli container image pull --insecure-skip-tls-verification --quiet dst "ostree-unverified-registry:$R:v1" >/dev/null
imgs=$("$P" list-images --repo dst)
[ "$(echo "$imgs" | jget 'd["images"]')" = "['docker://$R:v1']" ] || fail "list-images: $imgs"
want_ref="ostree/container/image/docker_3A__2F__2F_127_2E_0_2E_0_2E_1_3A_${PORT}/probe/os_3A_v1"
[ "$(echo "$imgs" | jget 'd["detail"][0]["ref"]')" = "$want_ref" ] || fail "image ref name"
for form in "ostree-unverified-registry:$R:v1" "ostree-unverified-image:docker://$R:v1" "ostree-image-signed:registry:$R:v1"; do
  q=$("$P" query-image --repo dst --imgref "$form")
  [ "$(echo "$q" | jget 'd["present"]')" = True ] || fail "query-image $form"
done
[ "$(echo "$q" | jget 'd["state"]["base_commit"]')" = "$BASE" ] || fail "base commit is not the embedded commit"
M1=$(echo "$q" | jget 'd["state"]["merge_commit"]')
"$P" query-image-commit --repo dst --commit "$M1" >/dev/null
[ "$("$P" prepare --repo dst --imgref "ostree-unverified-registry:$R:v1" --insecure | jget 'd["result"]')" = AlreadyPresent ] || fail "prepare v1"

# v2 reuses v1's stored ostree layer; only the derived layer is to fetch.
p2=$("$P" prepare --repo dst --imgref "ostree-unverified-registry:$R:v2" --insecure)
[ "$(echo "$p2" | jget 'd["result"], len(d["stored"]), len(d["to_fetch"])')" = "('Ready', 1, 1)" ] || fail "prepare v2: $p2"
"$P" cli container image pull --insecure-skip-tls-verification --quiet dst "ostree-unverified-registry:$R:v2" >/dev/null
M2=$("$P" query-image --repo dst --imgref "ostree-unverified-registry:$R:v2" | jget 'd["state"]["merge_commit"]')
tree=$(ostree --repo=dst ls -R "$M2")
echo "$tree" | grep -q ' /usr/etc/new.conf$' || fail "etc not moved to usr/etc"
echo "$tree" | grep -q ' /usr/share/factory/var/lib/probe/state$' || fail "var not moved to factory"
echo "$tree" | grep -q 'libx-link' && fail "whiteout not applied"
echo "$tree" | grep -q '/usr/share/empty' && fail "opaque whiteout not applied"
echo "$tree" | grep -q -e ' /opt' -e ' /boot' -e '/tmp/junk' && fail "filtered paths present"

# cached_update: 'latest' moves from v1 to v2; prepare caches it on the old merge commit.
"$P" cli container image pull --insecure-skip-tls-verification --quiet dst "ostree-unverified-registry:$R:latest" >/dev/null
push v2 latest
[ "$("$P" prepare --repo dst --imgref "ostree-unverified-registry:$R:latest" --insecure | jget 'd["result"]')" = Ready ] || fail "prepare latest"
[ "$("$P" query-image --repo dst --imgref "ostree-unverified-registry:$R:latest" | jget 'd["state"]["cached_update_present"]')" = True ] || fail "cached_update"

# A missing base layer ref breaks query_image_commit.
rm -rf dst2 && cp -a dst dst2
ostree --repo=dst2 refs --delete "$(echo "$q" | jget 'd["state"]["layers"][0]["ref"]')"
if err=$("$P" query-image-commit --repo dst2 --commit "$M1" 2>&1); then fail "query without base ref"; fi
echo "$err" | grep -q 'Missing base image ref ostree/container/blob/sha256_3A_' || fail "error text: $err"

# prune on a sysroot: two deployments (v1, v2), v3 pulled but not deployed.
{ [ -d sysroot ] && chattr -R -i sysroot 2>/dev/null; rm -rf sysroot; } || true
mkdir sysroot && ostree admin init-fs sysroot >/dev/null && ostree admin os-init --sysroot=sysroot default >/dev/null
for t in v1 v2; do
  "$P" cli container image deploy --sysroot "$W/sysroot" --stateroot default \
    --imgref "ostree-unverified-registry:$R:$t" --insecure-skip-tls-verification >/dev/null
done
"$P" cli container image pull --insecure-skip-tls-verification --quiet "$W/sysroot/ostree/repo" "ostree-unverified-registry:$R:v3" >/dev/null
pr=$("$P" prune --sysroot "$W/sysroot")
[ "$(echo "$pr" | jget 'd["n_images"], d["n_layers"]')" = "(1, 1)" ] || fail "prune: $pr"
echo "$pr" | jget 'list(d["refs_removed"])' | grep -q 'os_3A_v3' || fail "prune removed the wrong image"

echo "ostree-ext-peer smoke: 1 passed, 0 failed"
