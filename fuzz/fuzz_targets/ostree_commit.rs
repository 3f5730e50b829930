//! ostree commit objects we read (`.commit` GVariants) and the image
//! metadata we take from them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ostree::glib;
use unistore::stores::ostree_repo::commit_info_of;

fuzz_target!(|data: &[u8]| {
    let ty = glib::VariantTy::new("(a{sv}aya(say)sstayay)").unwrap();
    let v = glib::Variant::from_bytes_with_type(&glib::Bytes::from(data), ty);
    let _ = commit_info_of(&v, "fuzz");
    // The normal form too (what libostree hands out after validation).
    let _ = commit_info_of(&v.normal_form(), "fuzz");
});
