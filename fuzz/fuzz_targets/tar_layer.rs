//! Layer tars as the splitstream walk reads them (inline bytes). When the
//! walk accepts the input, the raw bytes and entry contents it hands out
//! give back the input byte for byte.
#![no_main]
use libfuzzer_sys::fuzz_target;
use unistore::stores::tar_walk::{Body, Entry, LayerVisitor, walk_chunks};

struct Collect(Vec<u8>);

impl LayerVisitor for Collect {
    fn raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
    fn entry(&mut self, e: &Entry, body: Body<'_>) -> anyhow::Result<()> {
        let _ = e.rel_path();
        let _ = e.rel_link_target();
        let _ = e.display();
        match body {
            Body::Inline(b) => self.0.extend_from_slice(b),
            Body::Empty => {}
            Body::External(_) => unreachable!("no objects here"),
        }
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    // Split at a fuzzer-chosen point so chunk boundaries are explored.
    let (cut, data) = match data.split_first() {
        Some((c, rest)) => ((*c as usize * 13) % (rest.len() + 1), rest),
        None => (0, data),
    };
    let chunks = [Ok(&data[..cut]), Ok(&data[cut..])];
    let mut c = Collect(vec![]);
    if walk_chunks(chunks, &mut c).is_ok() {
        assert_eq!(c.0, data, "the walk does not give back the tar");
    }
});
