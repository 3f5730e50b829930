//! Getting an image from a source: everything between a reference and
//! verified layers in the composefs repository.
//!
//! * [`imgref`]: image references (`docker://`, `oci:`, `containers-storage:`,
//!   ...) and the origin's `ostree-unverified-*` spellings;
//! * [`fetch_config`]: how to reach registries (registries.conf, credentials,
//!   signature policy), the same for every peer;
//! * [`sigpolicy`]: the containers signature policy, enforced before writing;
//! * [`remote`]: what a source says an image is now (`upgrade --check`);
//! * [`pull`]: the pull into the composefs repository, whatever the
//!   transport, with its stall guard, boot image and tag;
//! * [`chunked`]: zstd:chunked partial pulls (issue 26): the files the host
//!   lacks by byte range, the rest from the host, the tar rebuilt and checked;
//!   [`chunk_stream`]: the byte stream both hand to composefs-oci's import;
//! * [`layer_fetch`]: registry layers read, inflated and diff-id-checked on
//!   threads of their own;
//! * [`docker_schema2`]: Docker schema 2 manifests and their OCI conversion;
//! * [`oci_layout`]: `oci:` layout directories verified before a pull;
//! * [`layer_merge`]: the merged tree of an image's layers under one set of
//!   rules for every store (issue 25), and [`image_link`]: EROFS images of a
//!   tree unistore built, linked in place of composefs-oci's;
//! * [`ostree_encap`]: ostree-encapsulated images (the `ostree.commit`
//!   label): the embedded commit's tree, xattrs and objects.
//!
//! The stores ([`crate::stores`]) only store: this room calls them, never
//! the other way round.

pub mod chunk_stream;
pub mod chunked;
pub mod docker_schema2;
pub mod fetch_config;
pub mod image_link;
pub mod imgref;
pub mod layer_fetch;
pub mod layer_merge;
pub mod oci_layout;
pub mod ostree_encap;
pub mod pull;
pub mod remote;
pub mod sigpolicy;
