//! # Design notes
//!
//! Only rustdoc: the why behind the code, next to it.
//!
//! ## The map: one room per concern, calls go down the floors
//!
//! | room | what lives there | for example |
//! |---|---|---|
//! | [`crate::command`] | the [`crate::command::HostBackend`] trait and, per command, the options, outcomes and reports both backends share | `UpgradeOpts`, `GcReport`, `FsckOpts`, bootc's status shape |
//! | [`crate::backends`] | the two kinds of host, each owning its commands one module each: [`crate::backends::composefs_host`], [`crate::backends::ostree_host`]; `detect` and `for_kind` | GC of an ostree host: `backends/ostree_host/gc.rs`; upgrade of a composefs host: `backends/composefs_host/upgrade.rs` |
//! | [`crate::deployment`] | a composefs host's deployments: creating one, its origin, `/etc` (materialized, three-way merge), the staged marker, the host as its entries describe it | `deployment/origin.rs` |
//! | [`crate::boot`] | what a boot loader reads: BLS entries, their names and sort keys, kernel directories, migration of older layouts, systemd-boot on the ESP (from the image) | entries on the ESP: `boot/bls.rs` with `Sysroot::with_esp`; the loader: `boot/systemd_boot.rs` |
//! | [`crate::disk`] | whole disks: bootc's GPT, the FAT ESP made and filled without mounting it, `install to-disk` | `disk/to_disk.rs` |
//! | [`crate::source`] | getting an image from a source: references, registry settings and credentials, the signature policy, the pull into composefs, the registry layer reader, Docker schema 2, `oci:` layouts, the one layer merge every store follows | Docker manifests: `source/docker_schema2.rs`; the merge rules: `source/layer_merge.rs` |
//! | [`crate::stores`] | the three stores, which only store: [`crate::stores::composefs_repo`], [`crate::stores::containers_storage`] (with unistore's writer), [`crate::stores::ostree_repo`], and [`crate::stores::tar_walk`] (a stored layer replayed as its tar) | `stores/ostree_repo/commit.rs` |
//! | [`crate::unified`] | unified storage across the stores: the unified pull, import into the store, the ownership record, the share pass, the store GC | `unified/share.rs` |
//! | [`crate::verify`] | the image checks both backends' fsck share | `verify/sharing.rs` |
//! | [`crate::fs`] | filesystem mechanics: reflinks, extent maps, XFS preallocation | `fs/reflink.rs` |
//!
//! Cross-cutting, at the top: [`crate::sysroot`] (the root handle and its
//! paths), [`crate::install_config`], [`crate::lock`], [`crate::crashpoint`],
//! [`crate::progress`], [`crate::util`].
//!
//! `install to-filesystem` goes down the floors: the CLI builds
//! `command::install::InstallOpts` and asks `backends::for_kind` for a
//! backend; `backends::composefs_host::install` pulls through
//! `source::pull` (which reads `source::imgref`, `source::fetch_config`,
//! `source::layer_fetch` and writes `stores::composefs_repo`), or through
//! `unified` when unified; then `deployment::create` writes the state and
//! kernel directories and `boot::bls` the entry. No file imports one that
//! imports it back (`scripts/check-layout` checks it, with the 700-line
//! limit on every file).
//!
//! ## What "booted" means on a root that is not running
//!
//! `install`, tests and image builders work on roots that no kernel booted.
//! There the primary (default) boot entry is taken as booted, as if the host
//! had just booted it: `status` says so (`bootedIsPrimaryEntry`). On the
//! running system the caller reads the booted id from the kernel command
//! line and passes it in ([`crate::sysroot::BootedMode::Running`]): the
//! library itself never opens `/proc`.
//!
//! ## Which marker is written last, and why
//!
//! Entries are the truth: a deployment exists for the boot menu when a loader
//! entry names it. Every step before the entry (repository objects, tag,
//! state directory, kernel directory) is written through a temporary name
//! and renamed, and is harmless if left alone: a later run, or GC, treats a
//! state directory without an entry as an interrupted deploy. So the entry
//! file is written last, with write-to-temp, fsync and rename.
//!
//! ## Why the repository is SHA-512 and "insecure" here
//!
//! bootc's composefs repositories use `fsverity-sha512-12`. This machine's
//! kernel has no fs-verity on XFS or ext4, so the repository is created in
//! insecure mode: digests are still computed in userspace (they equal
//! `fsverity digest --hash-alg=sha512`), but the kernel does not enforce
//! them; entries carry `composefs=?<id>` to say verity may be missing.
//!
//! ## Why reflinks and not hardlinks between stores
//!
//! composefs objects are raw bytes shared by every image; ostree bare objects
//! and containers-storage files carry their own owner, mode and xattrs on the
//! inode. A hardlink would force one inode's metadata on all of them; a
//! reflink shares only the data extents, each store keeps its own inode.
//!
//! ## Deployment files share the objects' extents
//!
//! A deployment writes real files outside the repository: the kernel and
//! initrd under `boot/<kernel dir>/`, and `/etc` (and the first `/var`)
//! under `state/`. Each one that a composefs object holds is written by
//! `FICLONE` from that object ([`crate::stores::composefs_repo::write_file_content`]
//! over [`crate::fs::reflink::clone_or_copy`]): on a filesystem with reflinks it
//! costs no data blocks, and copy-on-write keeps it an independent file (an
//! edited `/etc` file gets its own blocks; the object is never touched).
//! Where `boot/` is another filesystem (a FAT ESP) or there are no reflinks
//! (ext4), the same call falls back to a copy. Contents small enough to be
//! inline in the EROFS image have no object and are written. The kernel
//! files are fsynced before their directory is renamed into place, as any
//! copy would be. The install result counts bytes reflinked and copied.
//!
//! ## Staging, finalize and rollback
//!
//! A staged deployment exists only if the marker
//! `<run>/composefs/staged-deployment` exists: upgrade writes the state
//! directory, the kernel directory and `entries.staged/` first and the
//! marker last; an older marker is removed before `entries.staged/` is
//! replaced, so a marker never names entries that are not there. GC treats
//! `entries.staged/` without a marker as an interrupted stage.
//!
//! Finalize plans the `/etc` merge completely before writing (a conflict
//! changes nothing), builds the merged `/etc` in a copy and exchanges it in,
//! then exchanges `entries.staged/` with `entries/` (renameat2 EXCHANGE: the
//! boot menu is either the old or the new one, never a mix). If killed after
//! the exchange, the primary entry already names the marker's deployment and
//! the next run only cleans up; if killed before it, the merge is redone on
//! the merged `/etc` and gives the same result.
//!
//! ## GC order
//!
//! Entries are the truth; everything else is derived and recoverable, so GC
//! walks from them: kernel directories no live entry names (a directory shared
//! by two deployments lives while either entry does), state directories
//! without an entry, then tags (every live manifest tagged, dead
//! `localhost/bootc-*` tags removed, other tags untouched since other
//! applications may share the repository), then the repository's own GC from
//! its tags. A kill between any two steps leaves garbage that the next run
//! removes, never a live deployment without its pieces.
//!
//! ## Registry layers: our reader, composefs-oci's pull
//!
//! composefs-oci 0.9.4 reads a registry blob through containers-image-proxy's
//! `get_blob`: a `tokio::fs::File` on skopeo's pipe behind an 8 KiB buffer,
//! so every 8 KiB is a round trip through tokio's blocking pool, and the
//! inflate shares a task with the tar split. On 2 CPUs that kept the machine
//! about 70% busy, and the sample's 105 MB layer took 2.2 s. The proxy's
//! other call, `GetRawBlob`, needs skopeo 1.19 (Debian 12 has 1.9.3).
//! [`crate::source::layer_fetch`] therefore fetches the layers the
//! repository lacks itself before the pull, from the same proxy: reads of
//! 256 KiB (the proxy's reader passes them whole to the pipe), the inflate and
//! a SHA-256 of the tar stream on a thread of their own, chunks into
//! composefs-oci's own `import_layer`. The pull then finds every layer and
//! does the rest as before (config, manifest, EROFS, tags), so the
//! repository is byte for byte what composefs-oci alone makes. Install of
//! the sample: 2.5 → 2.0 s. The hash checks the config's diff-id before the
//! layer is registered under it, which composefs-oci does not do and
//! `podman pull` does. Costs: one more skopeo session (≈10 ms on an upgrade,
//! measured). zstd layers, other digests and odd manifests are left to
//! composefs-oci.
//!
//! ## Unified storage: the order, and why reflinks
//!
//! A unified host keeps each image twice, logically (composefs objects and
//! the layer directories of the host containers-storage at
//! `composefs/bootc/storage`, which podman uses directly) and once,
//! physically: the two files share their data extents. Reflinks, not
//! hardlinks, because the store's files carry the image's owners, modes and
//! xattrs on their inodes while composefs objects are bare content shared by
//! every image: a reflink shares only the extents, each store keeps its own
//! inode. `enabled` therefore needs a filesystem with reflinks (probed with
//! `FICLONE` between two `O_TMPFILE` files before anything is written);
//! `enabled-with-copy` accepts hardlinks (composefs-oci's fallback into the
//! repository) or plain copies, and says so.
//!
//! On a filesystem with reflinks the unified pull goes registry → composefs
//! (exactly the plain pull, with composefs-oci's per-layer progress) →
//! containers-storage (the native writer of the next section replays each
//! layer's splitstream into `overlay/<id>/diff`, every regular file a
//! `FICLONE` of its object). `set-unified full` is the second half alone,
//! for each live image, without the network. The store image carries the
//! registry's manifest byte for byte and the registry name (taken from an
//! older image, as `podman pull` does). An image the store already has
//! (podman pulled it itself) is only named, and a `FIDEDUPERANGE` pass makes
//! its files share the objects' extents (the kernel compares the bytes
//! first, so a wrong pairing changes nothing).
//!
//! Why composefs first: the first design pulled with podman into the store
//! (per-layer progress from a transient `podman system service`) and
//! imported from there into composefs by reflinks. That was 1.4–1.6× the
//! time of `podman pull` alone on the sample image, because the import can
//! only follow podman (one big layer) and every `FICLONE` of a file podman
//! just wrote first waits for its writeback; composefs first is a plain
//! pull (≈0.9× `podman pull`) plus a metadata-only write of the store
//! (≈0.7 s for 259 MiB), about 0.95–1.1× `podman pull` in all. The old
//! order is kept where it still wins: without reflinks (`enabled-with-copy`
//! on ext4) the import into composefs hardlinks the store's files, so there
//! is still one copy, where writing the store from composefs would copy.
//!
//! The flag `composefs/bootc.json` is written last, with write-temp, fsync
//! and rename, only after every live image is complete in the store: a
//! failure or a kill at any earlier step leaves the host unmarked, and
//! running again resumes (images already complete are not copied again).
//! What unistore put in the store is recorded in
//! `composefs/bootc/unistore-images.json` (before a copy starts, so a crash
//! cannot orphan an image): the store's GC removes only images unistore
//! created and nobody else named, and otherwise only takes unistore's names
//! back. podman's own database stays out of the store (unistore's podman
//! runs with a private `static_dir`), because podman pins a store to the run
//! root recorded there and would refuse the user's own `podman --root`.
//!
//! ## fsck, and writing containers-storage natively
//!
//! `internals fsck` must be safe to run at any time, so without `--repair`
//! it writes nothing at all: the repository is opened with its shared lock
//! only, the store's JSON is read under containers/storage's own lock files
//! taken shared and only if they exist (creating one would be a change),
//! the sysroot lock is not taken, and reflink support is read from the
//! filesystem (XFS geometry flags, btrfs) instead of probed with a file.
//! Files are read with `O_NOATIME` (freshly written store files have atimes
//! older than their mtimes, which relatime would update on the first read);
//! only composefs-rs's own reads of manifests and configs escape that. The
//! tests compare the mode, size and mtime of every path under the root, and
//! the atimes of the files a content check reads, before and after.
//!
//! On a unified host with reflinks the check also makes sure the host holds
//! one physical copy: each store file that holds an object's content (the
//! layer splitstreams pair them, as for the share pass) must share that
//! object's extents. Extent maps decide, no data is read: the first extent
//! of each (`FIEMAP` without a flush) when both have a location, the whole
//! maps otherwise. A file with its own copy (a layer podman pulled itself,
//! a file someone rewrote) wastes space but breaks nothing, so it is a
//! note (count and bytes), not a failure; `--repair` runs the share pass
//! over the layers that hold such files and records them as shared. Without
//! reflinks there is nothing to share, and the report says the check was
//! not made (`sharingChecked: false`).
//!
//! `--repair` goes from the copy that is right to the one that is not, in
//! this order: composefs objects from store files (the store file's
//! fs-verity digest must equal the object id before it is cloned in and
//! renamed over the damaged one), then the store from composefs. The store is
//! rebuilt by unistore's own writer ([`crate::stores::containers_storage::writer`]) rather than by
//! an OCI export and `skopeo copy`: the layer splitstream already holds the
//! tar headers and the object ids of file contents, so one pass over it
//! creates `diff/` (contents by `FICLONE` from the objects: no data written
//! on a reflink filesystem) and the tar-split (headers and padding), and
//! checks the layer's sha256 against its diff-id before anything is
//! published. The store keeps the image's original manifest (compressed
//! layer digests recorded as `compressed-diff-digest`, so a later `podman
//! pull` of the same image reuses the layers).
//!
//! The same writer fills the store on a unified pull and for `set-unified
//! full`, so its speed is the unified pull's overhead over a plain one. It
//! must read every byte once anyway: tar-split records the CRC-64 of each
//! file, and the layer's sha256 is checked against the diff-id. The CRC
//! uses the CPU's carry-less multiply (`crc-fast`, 6× a table), the sha256
//! runs on a thread of its own ([`crate::stores::containers_storage::writer::hash_thread`]); on the sample image
//! the write went from 1.1 s to about 0.6 s. The record of what unistore put
//! in the store also keeps the layers known to share their objects' extents
//! (layer id and its `created` time, which podman would change if it ever
//! recreated the layer), so the share pass after a write skips what earlier
//! writes did: an upgrade walks only its new layers.
//!
//! The writer follows what podman 4.3 writes on this machine, checked by a
//! test that writes the same image both ways and compares the layer ids,
//! trees (types, modes, owners, xattrs, mtimes), tar-split records and JSON:
//! layer ids chain as `sha256("<parent id>+<diff-id hex>")`; whiteouts are
//! 0/0 character devices with mode 0, opaque directories carry
//! `trusted.overlay.opaque=y`; the `diff` root is 0555 and parents the tar
//! does not list are created 0755; tar-split records are the padding of the
//! previous file plus the next headers as one segment, then the entry (CRC-64
//! ISO of its content, big-endian, `null` for empty files), and a final
//! empty segment; `layers.json`/`images.json` are replaced through
//! `.tmp-<name><random>` files under `fcntl` (not `flock`) locks, whose
//! 64-byte "last writer" token is rewritten so running podman processes
//! reload. A layer is built under a temporary name, renamed into place with
//! its link and tar-split, and recorded in `layers.json` last (after
//! `syncfs`); a directory the writer published but did not record is marked
//! and removed by its next run, under the lock. A store whose JSON cannot be
//! parsed is never rewritten: it may describe images unistore knows nothing
//! about.
//!
//! # Ostree-encapsulated images (issue 22)
//!
//! Fedora's and CentOS's bootc bases carry an ostree commit (label
//! `ostree.commit`) as objects under `sysroot/ostree/repo` in their layers,
//! the files' xattrs only in `.file-xattrs` objects. Read as plain tars
//! they deploy the object store and lose every xattr. unistore reads them
//! as ostree-ext does ([`crate::source::ostree_encap`]): the tree is built
//! from the commit's own dirtree and dirmeta objects, each file with its
//! object's owner, mode and xattrs, plain layers above applied as usual.
//! Why from the objects and not by patching the tar's tree: empty files
//! are not hard links to their object in the tar and directories' xattrs
//! are only in dirmeta, so only the commit's tree has them all; and the
//! metadata objects are checked against their names, so the tree is the
//! commit's.
//!
//! * A composefs host gets its EROFS images (plain and boot) made from that
//!   tree and linked to the image's config in place of composefs-oci's
//!   (hook in `source::pull::finish_pull`); an install then collects
//!   composefs-oci's, which are garbage (an upgrade's GC does anyway).
//! * An ostree host first imports the commit itself, every object under the
//!   checksum the layer states and verified (libostree for metadata, small
//!   files and symlinks; our reflink writer for the rest, after computing
//!   the checksum from the composefs object), and points the first layer's
//!   blob ref at it (chunk layers at ostree-ext's object-set commits: the
//!   test checks ours equal ostree-ext's own import). The merge commit is
//!   then written from the same tree: its files' checksums come from the
//!   checksum cache the import filled, so nothing is read twice, and its
//!   root dirtree is the commit's (`ostree diff` empty without plain
//!   layers). Hooks in `backends/ostree_host/staging.rs`.
//! * In the host containers-storage the layers stay as their tars have them
//!   (an export must give the tar back); the writer sets the objects'
//!   xattrs on their files before publishing the layer.
//!
//! # ostree hosts
//!
//! An ostree host ([`crate::backends::ostree_host`]) is what bootc installs by
//! default, and libostree (2022.7 on Debian 12, through the `ostree` crate)
//! owns everything that makes it bootable: deployment checkouts, the `/etc`
//! three-way merge, BLS entries, kernels under `boot/ostree/`, the atomic
//! boot-version swap, cleanup and prune. unistore only turns an image into a
//! commit ([`crate::stores::ostree_repo::commit`]).
//!
//! Images arrive through a *staging* composefs repository
//! (`ostree/unistore-staging/`) rather than a second OCI importer: the pull
//! path (every transport, blob digests checked, whiteouts applied by
//! composefs-oci) is the same one composefs hosts use, and the staging
//! objects are exactly what the ostree content objects need, so on XFS
//! every file reaches `ostree/repo` by `FICLONE` and no data is written
//! twice; the staging repository is then removed. On a host bound to
//! composefs the same path will keep the repository (`composefs/`) instead.
//!
//! Content objects are written by unistore's own writer
//! ([`crate::stores::ostree_repo::objects`]): libostree's `write_content` would
//! copy the bytes, and only a writer of ours can reflink them. The checksum
//! is libostree's (`checksum_file_from_input` over the object and a file
//! header built from the tree's owner, mode and xattrs, names
//! NUL-terminated and sorted), so the format is never reimplemented; the
//! real `ostree fsck` verifies the result in the tests. Reading and hashing
//! every file is most of a commit's time, so the checksums of all content
//! leaves are computed ahead on every CPU, each thread with its own stream
//! (1.8 s -> 1.3 s for the commit step on the Debian sample, 2 CPUs); the
//! walk that builds the tree then only looks them up. Small inline files
//! and symlinks, dirmeta, dirtree, the commit and its ref go through
//! libostree. `composefs-ostree` was not used: REFERENCE section 4 lists
//! its traps (xattr names without the NUL give checksums `ostree fsck`
//! rejects, bare mode untested, no repo lock, each file read twice).
//!
//! `/var` of the image moves to `usr/share/factory/var` in the commit and is
//! copied into the stateroot's `var/` at the first deployment: libostree
//! 2022.7 mounts the stateroot's `var/` and never looks at a commit's.
//! libostree stages only on a booted host; on a root that is not running,
//! `upgrade` and `switch` write the new deployment as the next boot at once
//! (as `ostree admin deploy` does), and `finalize-staged` has nothing to do.
//!
//! ## Unified storage on ostree hosts
//!
//! A bound host ([`crate::backends::ostree_host::unified`]) keeps its
//! composefs repository instead of a staging one, and its commits are
//! *synthesized* from it (marked in the commit metadata, so status and
//! fsck can tell a classic commit, which stays `pending` until an upgrade).
//! Two choices differ from bootc's proposal (PRs #2205/#2236):
//!
//! * **Checksums are cached** by composefs object id + owner + mode +
//!   xattrs ([`crate::stores::ostree_repo::checksum_cache`]): the pair
//!   determines the ostree checksum, so an upgrade reads only new files
//!   (v1 -> v2 of the test image: 3 files read, 8 from the cache). A cached
//!   checksum is used only while its object exists; fsck compares each
//!   entry with the object it names.
//! * **Objects already in the repository are deduplicated, not
//!   rewritten**: a classic commit's objects have the same checksums as the
//!   synthesized ones, so the synthesis reuses them and makes them share
//!   the composefs object's extents (`FIDEDUPERANGE`, which compares the
//!   bytes in the kernel). `set-unified full` does the same for live
//!   classic commits without redeploying them. A failed reflink does not
//!   stop reflinking for the rest (each file falls back on its own).
//!
//! On an ostree host the store is bootc's `ostree/bootc/storage`, and
//! `composefs/bootc` links to `ostree/bootc`, so the unified code's paths
//! (store, ownership record) are the same on both kinds of host.
//!
//! ## The ostree layout released bootc reads: a merge commit and layer commits
//!
//! bootc's ostree hosts are read through ostree-ext (released 0.15.3): every
//! `bootc status` calls `query_image_commit` for each deployment, which
//! needs the first layer's ref `ostree/container/blob/<escaped blob
//! digest>`; an update check (`prepare`) reuses each layer whose ref exists
//! and says "no changes" when the deployed manifest digest matches; its GC
//! keeps the layer refs the live images' manifests name. So an image is a
//! merge commit (the deployed tree, under the image ref) plus one commit
//! per layer ([`crate::stores::ostree_repo::layers`]), written in one
//! libostree transaction, so a crash leaves all the refs or none. A layer
//! commit is the layer's real tree, never the whole image under a layer's
//! name: ostree-ext would reuse such a lie as that layer's content. Layer
//! content objects are reflinks of composefs objects like the merge
//! commit's, and files the merged tree has with the same metadata are the
//! same ostree objects, so the layers cost only their metadata and the
//! files later layers replace.
//!
//! Image refs use ostree-ext's escaping exactly (`/` kept after a letter or
//! digit): an older unistore escaped every `/`, so ostree-ext found no
//! image and its GC aborted. Hosts written that way are migrated by the
//! first writing command ([`crate::backends::ostree_host::migrate`]).
//!
//! ## status is bootc 1.16.9's, field for field
//!
//! Users run the real bootc on hosts unistore installed, so `status --json`
//! has bootc's shape ([`crate::command::status`]) and bootc's values where
//! they can be known offline: `bootType` `Bls`, `store` `ostreeContainer`
//! and `type` `bootcHost` only on ostree hosts, `cachedUpdate` from the
//! detached metadata ostree-ext's update check leaves on a deployment's
//! commit, the version from the config's labels then the manifest's
//! annotation. What only the running system knows (soft-reboot capability,
//! a composefs host's `/usr` overlay) is what bootc prints when it cannot
//! tell; unistore's own fields are marked as such.
//!
//! A composefs host has what bootc expects beside the repository:
//! `boot/grub2/` (bootc without UEFI takes the loader for GRUB and fails
//! every command without that directory) and the link
//! `ostree/bootc -> ../composefs/bootc`. Where bootc itself made
//! `ostree/bootc` a real directory (its update check writes
//! `ostree/bootc/storage/` where the link is missing), unistore leaves it
//! alone and keeps its store at `composefs/bootc/storage`.
