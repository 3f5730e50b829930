//! Generating OCI images for tests, and describing what their merged tree must contain.
//!
//! * [`build_test_image`]: a small deterministic multi-layer image exercising whiteouts,
//!   opaque dirs, hard links, symlinks, xattrs, odd modes and owners, and a kernel.
//! * [`build_from_rootfs`]: pack a real root filesystem directory.
//! * [`BuiltImage::expected`] is computed by applying the written layer blobs in memory
//!   ([`merge`]); [`verify::compare_tree`] compares a real tree with it.
//! * [`corrupt_first_layer_blob`] prepares bad input.
//! * [`encapsulated`]: ostree-encapsulated images, made by the real `ostree` and
//!   ostree-ext's own `container encapsulate` (issue 22).

pub mod encapsulated;
pub mod expected;
pub mod host_files;
pub mod layer;
pub mod merge;
pub mod oci;
pub mod rootfs;
pub mod scale;
pub mod synthetic;
pub mod verify;

pub use expected::{
    COMPOSEFS_VISIBLE_XATTRS, EntryKind, ExpectedEntry, Xattrs, find_entry,
    is_composefs_visible_xattr,
};
pub use host_files::host_executable_files;
pub use oci::{
    add_hostile_layer, add_raw_layer, add_raw_layer_claiming, add_special_layer,
    corrupt_first_layer_blob, expected_from_oci, layer_blobs,
};
pub use rootfs::build_from_rootfs;
pub use scale::{ScaleImage, ScaleImageOpts, build_scale_image};
pub use synthetic::{TEST_KVER, TestImageOpts, build_test_image};
pub use verify::{CompareOpts, XattrCheck, compare_tree, scan_tree};

/// The result of building an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BuiltImage {
    /// `sha256:<hex>` of the manifest.
    pub manifest_digest: String,
    /// `sha256:<hex>` of the config.
    pub config_digest: String,
    /// `sha256:<hex>` of each uncompressed layer, bottom first.
    pub diff_ids: Vec<String>,
    /// The final merged tree (whiteouts applied), sorted by path, root omitted.
    pub expected: Vec<ExpectedEntry>,
}

impl BuiltImage {
    /// The expected entry at absolute `path`.
    pub fn entry(&self, path: &str) -> Option<&ExpectedEntry> {
        find_entry(&self.expected, path)
    }
}
