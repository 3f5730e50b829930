//! OCI manifests and indexes as we read them (oci-spec, through
//! composefs-oci) and Docker schema 2 manifests and lists we convert.
#![no_main]
use containers_image_proxy::oci_spec::image::{ImageIndex, ImageManifest};
use libfuzzer_sys::fuzz_target;
use unistore::source::docker_schema2::{blob_digests, pick_from_list, to_oci_manifest};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ImageManifest::from_reader(data) {
        let _ = m.config().digest().to_string();
        for l in m.layers() {
            let _ = (l.digest().to_string(), l.media_type().to_string(), l.size());
        }
    }
    let _ = ImageIndex::from_reader(data);
    let _ = blob_digests(data);
    let _ = pick_from_list(data);
    if let Ok(oci) = to_oci_manifest(data) {
        // What we convert is valid JSON with the same blobs.
        let _: serde_json::Value =
            serde_json::from_slice(&oci).expect("converted manifest is JSON");
    }
});
