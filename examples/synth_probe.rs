//! Times the synthetic generator and runs the alignment probes on it.
//!
//! `cargo run --release --example synth_probe -- SIZE [N_TRAIN N_VALID N_TEST] [--no-probe]`
//! prints the generation time, the test Pearson of the aligned (oracle) and pooled probes,
//! and the resident size of the arrays.

use mica::data::synth::{generate, probe::probe, SynthConfig, SynthSize};
use std::time::Instant;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let no_probe = args.iter().any(|a| a == "--no-probe");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let size = pos
        .first()
        .and_then(|s| SynthSize::from_name(s))
        .ok_or_else(|| anyhow::anyhow!("usage: synth_probe small|mosi|mosei|iemocap [N N N]"))?;
    let mut cfg = SynthConfig::preset(size, 0);
    if pos.len() == 4 {
        cfg.n_train = pos[1].parse()?;
        cfg.n_valid = pos[2].parse()?;
        cfg.n_test = pos[3].parse()?;
    }
    let t0 = Instant::now();
    let ds = generate(&cfg)?;
    let gen_s = t0.elapsed().as_secs_f64();
    let bytes: usize = ds
        .splits
        .values()
        .flat_map(|s| s.modalities())
        .map(|m| m.data.len() * 4)
        .sum();
    println!(
        "{}: {}/{}/{} samples generated in {gen_s:.2} s ({:.2} GB of features)",
        size.name(),
        cfg.n_train,
        cfg.n_valid,
        cfg.n_test,
        bytes as f64 / 1e9
    );
    if !no_probe {
        let t1 = Instant::now();
        let r = probe(&ds)?;
        println!(
            "  aligned (oracle) r = {:.3}, pooled r = {:.3}, gap {:.3} (probes {:.1} s)",
            r.aligned_r,
            r.pooled_r,
            r.aligned_r - r.pooled_r,
            t1.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
