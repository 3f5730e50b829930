//! containers-storage `overlay-layers/layers.json`, and the layer chains
//! read from it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unistore::stores::containers_storage::{
    StoreImage, StoreLayer, format::parse_value_array, layer_chain, parse_json_array,
};

fuzz_target!(|data: &[u8]| {
    let _ = parse_value_array(data, "layers.json");
    let Ok(layers) = parse_json_array::<StoreLayer>(data) else {
        return;
    };
    for l in layers.iter().take(16) {
        let _ = l.incomplete();
        let img = StoreImage {
            id: "fuzz".into(),
            layer: Some(l.id.clone()),
            ..Default::default()
        };
        let _ = layer_chain(&img, &layers);
    }
});
