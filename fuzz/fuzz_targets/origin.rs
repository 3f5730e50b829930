//! Deployment `.origin` files (INI) and legacy `.imginfo` JSON, as read from disk.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unistore::deployment::origin::{Origin, parse_imginfo};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(o) = Origin::parse(text) {
        // What we write back must read back the same.
        let again = Origin::parse(&o.to_text()).expect("a written origin parses");
        assert_eq!(again, o);
        let _ = o.identity_digest();
    }
    let _ = parse_imginfo(text);
});
