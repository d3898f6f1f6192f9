use super::probe::probe;
use super::*;

fn small(seed: u64) -> SynthConfig {
    SynthConfig::preset(SynthSize::Small, seed)
}

#[test]
fn probe_numbers_small() {
    let ds = generate(&small(1)).unwrap();
    let r = probe(&ds).unwrap();
    eprintln!("{r:?}");
}
