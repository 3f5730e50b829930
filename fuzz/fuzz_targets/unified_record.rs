//! The ownership record (`composefs/bootc/unistore-images.json`) and the
//! unified flag (`composefs/bootc.json`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = unistore::unified::record::parse_record(data) {
        for i in r.images() {
            let _ = (&i.manifest_digest, &i.image_id, i.names.len());
        }
    }
    let _ = unistore::unified::parse_flag(data);
});
