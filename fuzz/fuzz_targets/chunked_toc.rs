//! zstd:chunked tables of contents as a registry could serve them: the
//! manifest's position annotation, the compressed table (checked against
//! its checksum, decompressed to at most the size the annotation gives)
//! and the JSON. Whatever the bytes, no panic; a table that parses has its
//! contents in blob order, inside the tar frames.
#![no_main]
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use unistore::source::chunked::toc;

fuzz_target!(|data: &[u8]| {
    let Some((&k, rest)) = data.split_first() else {
        return;
    };
    let cut = (k as usize * 7) % (rest.len() + 1);
    let (pos, body) = rest.split_at(cut);
    let annotations: std::collections::HashMap<String, String> = [
        (
            "io.containers.zstd-chunked.manifest-position".to_string(),
            String::from_utf8_lossy(pos).into_owned(),
        ),
        (
            "io.github.containers.zstd-chunked.manifest-checksum".to_string(),
            format!("sha256:{}", hex::encode(Sha256::digest(body))),
        ),
    ]
    .into();
    let blob_size = 1u64 << 40;
    if let Ok(Some(loc)) = toc::locate(Some(&annotations), blob_size) {
        // The body as the compressed table: the decoder, bounded.
        let _ = toc::open(body, &loc);
    }
    // The body as the JSON itself.
    let offset = 8 + (k as u64) * 1000;
    if let Ok(t) = toc::parse(body, offset) {
        let mut end = 0;
        for e in t.entries.iter().filter(|e| e.has_content()) {
            assert!(e.offset >= end && e.end_offset > e.offset && e.end_offset <= t.tar_end);
            end = e.end_offset;
        }
    }
});
