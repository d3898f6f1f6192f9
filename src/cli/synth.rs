//! `mica synth`: generate the built-in synthetic asynchronous benchmark.

use crate::data::pickle_write::{mult_labels, write_mult_pickle};
use crate::data::synth::{generate_with_progress, SynthConfig, SynthSize};
use crate::data::Dataset;
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// On-disk format of `mica synth`'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SynthFormat {
    /// mica's own format (safetensors + manifest, keeps the ground-truth intervals).
    Mica,
    /// A MulT-layout pickle (`*_data_noalign.pkl`), loadable by the official MulT / MICA code.
    MultPkl,
}

/// Arguments of `mica synth`.
#[derive(Args, Debug, Clone)]
pub struct SynthArgs {
    /// Size preset: shapes and split sizes of the real benchmark it mimics.
    #[arg(long, value_enum, default_value = "small")]
    pub size: SynthSize,
    /// Master seed: the same seed and options give a bit-identical dataset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of training samples (default: the preset's).
    #[arg(long)]
    pub n_train: Option<usize>,
    /// Number of validation samples (default: the preset's).
    #[arg(long)]
    pub n_valid: Option<usize>,
    /// Number of test samples (default: the preset's).
    #[arg(long)]
    pub n_test: Option<usize>,
    /// Mean number of sentiment words (planted events) per sample.
    #[arg(long)]
    pub events: Option<f32>,
    /// Mean number of distractor bursts (bursts on neutral words) per sample.
    #[arg(long)]
    pub distractors: Option<f32>,
    /// Probability that a sentiment word co-occurs with a polarity-flipping acoustic burst.
    #[arg(long)]
    pub p_flip: Option<f32>,
    /// Probability that a sentiment word co-occurs with a visual emphasis (×2) burst.
    #[arg(long)]
    pub p_emphasis: Option<f32>,
    /// Burst amplitude, in units of the feature noise standard deviation.
    #[arg(long)]
    pub burst_strength: Option<f32>,
    /// Asynchrony: frame-boundary jitter as a fraction of the frame period, in [0, 0.9].
    #[arg(long)]
    pub jitter: Option<f32>,
    /// Asynchrony: largest start offset of the acoustic / visual streams, in seconds.
    #[arg(long)]
    pub max_offset: Option<f32>,
    /// Asynchrony: strength of the smooth time warp of the acoustic / visual grids, in [0, 0.8].
    #[arg(long)]
    pub warp: Option<f32>,
    /// Standard deviation of the label noise (sentiment units).
    #[arg(long)]
    pub noise: Option<f32>,
    /// Distribution discrepancy between modalities (0 = identical N(0,1) columns, 1 = default).
    #[arg(long)]
    pub discrepancy: Option<f32>,
    /// Crossmodal echo: strength of the random per-word latent that a word and its
    /// co-occurring acoustic and visual frames share (content that tells which frames go
    /// with which word, nothing of the label; 0 = none).
    #[arg(long)]
    pub echo: Option<f32>,
    /// Output path. `mult-pkl`: a `.pkl` file, or an existing directory, which receives
    /// `synth_<size>_data_noalign.pkl`.
    #[arg(long)]
    pub out: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "mica")]
    pub format: SynthFormat,
    /// Also write, as JSON, the float64 sum of every array of every split as the MulT
    /// layout holds it (`{"train": {"text": ..., "labels": ...}, ...}`), to check a written
    /// file against (`scripts/check_mult_pkl.py FILE SUMS`).
    #[arg(long)]
    pub sums: Option<PathBuf>,
    /// Word-aligned output (what MFM and Graph-MFN read): every word takes the mean of the
    /// acoustic / visual frames that truly co-occur with it (the ground-truth intervals),
    /// so all three modalities have the text's length. The probes (`--probe`) are fitted
    /// on the unaligned data.
    #[arg(long)]
    pub aligned: bool,
    /// Also fit the two closed-form probes and print their test Pearson r: the aligned
    /// oracle (knows the rule's form and the TRUE alignment) and the pooled baseline
    /// (ridge on mean/max-pooled features): the bounds a model should land between.
    #[arg(long)]
    pub probe: bool,
}

impl SynthArgs {
    /// The generator settings: the preset with every given option applied.
    pub fn config(&self) -> SynthConfig {
        let mut c = SynthConfig::preset(self.size, self.seed);
        let set = |dst: &mut usize, v: Option<usize>| *dst = v.unwrap_or(*dst);
        set(&mut c.n_train, self.n_train);
        set(&mut c.n_valid, self.n_valid);
        set(&mut c.n_test, self.n_test);
        let setf = |dst: &mut f32, v: Option<f32>| *dst = v.unwrap_or(*dst);
        setf(&mut c.events, self.events);
        setf(&mut c.distractors, self.distractors);
        setf(&mut c.p_flip, self.p_flip);
        setf(&mut c.p_emphasis, self.p_emphasis);
        setf(&mut c.burst_strength, self.burst_strength);
        setf(&mut c.jitter, self.jitter);
        setf(&mut c.max_offset_s, self.max_offset);
        setf(&mut c.warp, self.warp);
        setf(&mut c.noise, self.noise);
        setf(&mut c.discrepancy, self.discrepancy);
        setf(&mut c.echo, self.echo);
        c
    }
}

/// Where a `mult-pkl` output goes: `out` itself, or `out/synth_<size>_data_noalign.pkl`
/// (`synth_<size>_data.pkl` when `aligned`, MulT's names) when `out` is an existing
/// directory.
pub fn mult_pkl_path(out: &Path, size: SynthSize, aligned: bool) -> PathBuf {
    if out.is_dir() {
        let tail = if aligned { "" } else { "_noalign" };
        out.join(format!("synth_{}_data{tail}.pkl", size.name()))
    } else {
        out.to_path_buf()
    }
}

/// Saves a generated dataset in mica's own format.
fn save_mica(ds: &Dataset, out: &Path) -> Result<()> {
    crate::data::mica_format::save(ds, out)?;
    Ok(())
}

/// Refuses non-finite generator options (they would write non-finite data).
fn check_finite(args: &SynthArgs) -> Result<()> {
    for (flag, v) in [
        ("--events", args.events),
        ("--distractors", args.distractors),
        ("--p-flip", args.p_flip),
        ("--p-emphasis", args.p_emphasis),
        ("--burst-strength", args.burst_strength),
        ("--jitter", args.jitter),
        ("--max-offset", args.max_offset),
        ("--warp", args.warp),
        ("--noise", args.noise),
        ("--discrepancy", args.discrepancy),
        ("--echo", args.echo),
    ] {
        if let Some(x) = v {
            anyhow::ensure!(x.is_finite(), "{flag} {x}: expected a finite number");
        }
    }
    Ok(())
}

/// Refuses a dataset whose arrays alone cannot fit in this machine's memory.
fn check_memory(cfg: &SynthConfig) -> Result<()> {
    let n: u128 = cfg.split_sizes().iter().map(|&x| x as u128).sum();
    // Features plus the (start, end) interval of every element, f32 each.
    let per_sample: u128 = (0..3)
        .map(|m| cfg.lengths[m] as u128 * (cfg.dims[m] as u128 + 2))
        .sum();
    let bytes = n.saturating_mul(per_sample).saturating_mul(4);
    let limit = crate::model::memory::limit_bytes();
    anyhow::ensure!(
        bytes <= limit,
        "{} samples need at least {}, more than this machine's {}: lower --n-train / --n-valid / --n-test",
        n,
        crate::model::memory::human(bytes),
        crate::model::memory::human(limit)
    );
    Ok(())
}

/// Runs `mica synth`.
pub fn run(args: &SynthArgs) -> Result<()> {
    check_finite(args)?;
    let cfg = args.config();
    cfg.validate()?;
    check_memory(&cfg)?;
    if args.format == SynthFormat::Mica {
        crate::data::mica_format::check_output(&args.out)?;
    }
    let total: usize = cfg.split_sizes().iter().sum();
    let bar = indicatif::ProgressBar::new(total as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "generating {pos}/{len} samples [{elapsed_precise}] {wide_bar} eta {eta}",
        )?,
    );
    if total < 5000 && cfg.lengths.iter().max() < Some(&100) {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let start = std::time::Instant::now();
    let ds = generate_with_progress(&cfg, &mut |done, _| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    let probe_ds = args.probe.then(|| ds.clone());
    let ds = if args.aligned {
        crate::data::word_align::average_onto_words(&ds)?
    } else {
        ds
    };
    eprintln!(
        "generated synth-{} (seed {}): {}/{}/{} samples in {:.1} s",
        cfg.size.name(),
        cfg.seed,
        cfg.n_train,
        cfg.n_valid,
        cfg.n_test,
        start.elapsed().as_secs_f64()
    );
    let written = match args.format {
        SynthFormat::Mica => {
            save_mica(&ds, &args.out)?;
            args.out.clone()
        }
        SynthFormat::MultPkl => {
            let path = mult_pkl_path(&args.out, cfg.size, args.aligned);
            write_mult_pickle(&ds, &path)?;
            path
        }
    };
    eprintln!("wrote {}", written.display());
    if let Some(path) = &args.sums {
        crate::durable::write_atomic(
            path,
            serde_json::to_string_pretty(&array_sums(&ds))?.as_bytes(),
        )?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(ds) = probe_ds {
        let r = crate::data::synth::probe::probe(&ds)?;
        println!(
            "probes (test Pearson r): aligned oracle {:.3}, pooled baseline {:.3}",
            r.aligned_r, r.pooled_r
        );
    }
    Ok(())
}

/// Per split, the float64 sum of `text`, `audio`, `vision` and MulT's `labels` array.
pub fn array_sums(ds: &Dataset) -> BTreeMap<String, BTreeMap<String, f64>> {
    let sum = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>();
    ds.splits
        .iter()
        .map(|(name, split)| {
            let mut m: BTreeMap<String, f64> = ["text", "audio", "vision"]
                .iter()
                .zip(split.modalities())
                .map(|(k, md)| (k.to_string(), sum(&md.data)))
                .collect();
            m.insert("labels".into(), sum(&mult_labels(&split.labels).1));
            (name.clone(), m)
        })
        .collect()
}
