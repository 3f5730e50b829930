//! containers-storage tar-split files (gzip'd JSON lines). The input is
//! gzip'd here unless it starts with 0 (then the rest is read as is), so
//! the fuzzer explores the JSON lines and the gzip layer both.
#![no_main]
use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use unistore::stores::containers_storage::format::parse_tar_split;

fuzz_target!(|data: &[u8]| {
    let p = Path::new("fuzz.tar-split.gz");
    match data.split_first() {
        Some((0, raw)) => {
            let _ = parse_tar_split(raw, p);
        }
        _ => {
            let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
            gz.write_all(data).unwrap();
            let _ = parse_tar_split(&gz.finish().unwrap()[..], p);
        }
    }
});
