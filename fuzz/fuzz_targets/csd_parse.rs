//! Fuzz target: the `.csd` (HDF5 subset) reader must never panic, loop or allocate without
//! bound, whatever the bytes. Whatever reads as a whole must read the same video by video.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mica::data::csd::{ComputationalSequence, CsdReader};

fuzz_target!(|data: &[u8]| {
    let name = Path::new("fuzz.csd");
    if let Ok(cs) = ComputationalSequence::from_bytes(name, data) {
        let r = CsdReader::from_source(name, data).expect("opened once, opens again");
        for (id, v) in &cs.videos {
            let mut again = r.read_video(id).expect("read once, reads again");
            again.features.zero_non_finite();
            assert_eq!(&again, v);
        }
    }
});
