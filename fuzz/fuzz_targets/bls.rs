//! BLS Type 1 boot entries, as read from `boot/loader/entries*/`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unistore::boot::bls::BlsEntry;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(e) = BlsEntry::parse("fuzz.conf", text) {
        let _ = e.deployment_id();
        let _ = e.missing_verity_allowed();
        let _ = e.is_primary();
        let _ = e.kernel_dir();
        let _ = e.at_position(true);
        let _ = e.at_position(false);
        // What we write back must read back.
        BlsEntry::parse("fuzz.conf", &e.render()).expect("a rendered entry parses");
    }
});
