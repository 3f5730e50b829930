//! The ostree checksum cache (`ostree/unistore-checksums.json`) and its keys.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unistore::stores::ostree_repo::checksum_cache::{ChecksumCache, parse_key};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = ChecksumCache::parse(data) {
        for (k, v) in c.entries().take(64) {
            let _ = parse_key(k);
            let _ = c.get(k).map(|x| x == *v);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_key(s);
    }
});
