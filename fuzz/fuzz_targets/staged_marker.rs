//! The staged-deployment marker (`<run>/composefs/staged-deployment`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = unistore::deployment::staged::parse(data);
});
