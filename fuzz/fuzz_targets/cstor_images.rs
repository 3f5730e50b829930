//! containers-storage `overlay-images/images.json`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unistore::stores::containers_storage::{
    StoreImage, format::parse_value_array, parse_json_array,
};

fuzz_target!(|data: &[u8]| {
    let _ = parse_value_array(data, "images.json");
    let _ = parse_json_array::<StoreImage>(data);
});
