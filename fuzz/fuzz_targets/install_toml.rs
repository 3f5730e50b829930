//! Install configuration (`bootc/install/*.toml`) and `kargs.d/*.toml` of an image.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unistore::install_config::{InstallConfig, parse_kargs_d};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut c = InstallConfig::default();
    let _ = c.merge_text("00-fuzz.toml", text, "x86_64");
    let _ = c.merge_text("01-fuzz.toml", text, "aarch64");
    let _ = parse_kargs_d("fuzz.toml", text, "x86_64");
});
