//! OCI image configs as we read them (oci-spec, through composefs-oci) and
//! the fields we take from one (ostree commit metadata keeps it as JSON).
#![no_main]
use containers_image_proxy::oci_spec::image::ImageConfiguration;
use libfuzzer_sys::fuzz_target;
use unistore::stores::ostree_repo::CommitInfo;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ImageConfiguration::from_reader(data) {
        let _ = c.rootfs().diff_ids().len();
        let _ = c.config().as_ref().map(|c| c.labels().clone());
        let _ = c.created();
        let _ = c.architecture().to_string();
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let info = CommitInfo {
            manifest_digest: None,
            config: Some(v),
            manifest: None,
            timestamp: 0,
            composefs_manifest: None,
        };
        let _ = info.architecture();
        let _ = info.created();
        let _ = info.version();
    }
});
