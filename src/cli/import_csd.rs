//! `mica import-csd`: CMU-MultimodalSDK computational sequences (`.csd`) into a mica dataset.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::data::csd_import::{self, AlignMode, CsdInputs, Folds, ImportOptions, ImportReport};
use crate::data::MODALITIES;

/// Arguments of `mica import-csd`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = "\
Example (CMU-MOSI as the SDK distributes it):
  mica import-csd --text CMU_MOSI_TimestampedWordVectors.csd --audio CMU_MOSI_COVAREP.csd \\
      --vision CMU_MOSI_Visual_Facet_41.csd --labels CMU_MOSI_Opinion_Labels.csd \\
      --folds mosi --out mosi-unaligned

The rules are the SDK's own (mmdatasdk align / impute / hard_unify / get_tensors), so the
output equals the SDK pipeline's tensors, computed video by video without its memory cost.
Segment ids are the SDK's keys, `<video>[<label row>]`.")]
pub struct Args {
    /// Word-vector sequence (e.g. glove_vectors / TimestampedWordVectors): one row per word.
    #[arg(long, value_name = "CSD")]
    pub text: PathBuf,
    /// Acoustic sequence (e.g. COVAREP). `-inf` values become 0 and are counted.
    #[arg(long, value_name = "CSD")]
    pub audio: PathBuf,
    /// Visual sequence (e.g. FACET 4.2, OpenFace).
    #[arg(long, value_name = "CSD")]
    pub vision: PathBuf,
    /// Label sequence: one row per opinion segment, its interval the segment's span,
    /// sentiment in column 0 (MOSEI's 7-column labels: the sentiment column).
    #[arg(long, value_name = "CSD")]
    pub labels: PathBuf,
    /// Folds: `mosi` or `mosei` (the SDK's standard folds, built in) or a JSON file
    /// `{"train": [video ids], "valid": [...], "test": [...]}`. Labelled videos in no fold
    /// are skipped (and counted); a video in two folds is an error.
    #[arg(long, value_name = "NAME|FILE", conflicts_with_all = ["train", "valid", "test"])]
    pub folds: Option<String>,
    /// Explicit training video ids (comma-separated), with --valid and --test.
    #[arg(long, value_delimiter = ',', requires_all = ["valid", "test"])]
    pub train: Option<Vec<String>>,
    /// Explicit validation video ids (comma-separated).
    #[arg(long, value_delimiter = ',', requires_all = ["train", "test"])]
    pub valid: Option<Vec<String>>,
    /// Explicit test video ids (comma-separated).
    #[arg(long, value_delimiter = ',', requires_all = ["train", "valid"])]
    pub test: Option<Vec<String>>,
    /// `none`: unaligned, each modality keeps its own elements inside each segment (MulT's
    /// unaligned setting); `words`: every modality averaged onto the words (the SDK's
    /// `align` with a mean), all modalities --text-len long.
    #[arg(long, default_value = "none", value_parser = ["none", "words"])]
    pub align: String,
    /// Fixed text length: left zero-padding, or the LAST elements kept (as the SDK's
    /// get_tensors).
    #[arg(long, default_value_t = 50)]
    pub text_len: usize,
    /// Fixed audio length (unaligned).
    #[arg(long, default_value_t = 375)]
    pub audio_len: usize,
    /// Fixed vision length (unaligned).
    #[arg(long, default_value_t = 500)]
    pub vision_len: usize,
    /// Drop (and list) labelled videos missing from a modality file instead of failing.
    #[arg(long)]
    pub skip_missing: bool,
    /// Output directory (mica format: per split safetensors with features, lengths, labels
    /// and every element's start/end time, plus manifest.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

impl Args {
    fn folds(&self) -> anyhow::Result<Folds> {
        if let (Some(train), Some(valid), Some(test)) = (&self.train, &self.valid, &self.test) {
            return Ok(Folds {
                source: "--train/--valid/--test".into(),
                train: train.clone(),
                valid: valid.clone(),
                test: test.clone(),
            });
        }
        let Some(f) = &self.folds else {
            bail!("give the folds: --folds mosi|mosei|FILE, or --train/--valid/--test video ids");
        };
        if let Some(mut std) = Folds::standard(f) {
            std.source = format!(
                "standard {} folds of the CMU-MultimodalSDK",
                f.to_lowercase()
            );
            return Ok(std);
        }
        let p = Path::new(f);
        if !p.exists() {
            bail!("--folds {f}: neither a built-in fold set (mosi, mosei) nor an existing file");
        }
        Ok(Folds::from_file(p)?)
    }

    fn inputs(&self) -> CsdInputs {
        CsdInputs {
            text: self.text.clone(),
            audio: self.audio.clone(),
            vision: self.vision.clone(),
            labels: self.labels.clone(),
        }
    }
}

/// Refuses an output directory that is, or would overwrite, one of the inputs.
fn check_output(out: &Path, inputs: &[&Path]) -> anyhow::Result<()> {
    if out.is_file() {
        bail!("--out {}: is a file; give a directory", out.display());
    }
    let written = [
        "manifest.json",
        "train.safetensors",
        "valid.safetensors",
        "test.safetensors",
    ];
    for input in inputs {
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        };
        let overwritten = written.iter().any(|w| same(&out.join(w), input));
        if same(out, input) || overwritten {
            bail!(
                "--out {}: would overwrite the input {}",
                out.display(),
                input.display()
            );
        }
    }
    Ok(())
}

fn print_report(r: &ImportReport) {
    let list = |v: &[String]| {
        let head: Vec<&str> = v.iter().take(8).map(String::as_str).collect();
        format!(
            "{}{}",
            head.join(", "),
            if v.len() > 8 { ", ..." } else { "" }
        )
    };
    for (m, key) in MODALITIES.iter().enumerate() {
        eprintln!(
            "{key:<6}: {} non-finite input values; {} output values replaced by 0; {} segments truncated{}",
            r.input_non_finite[m],
            r.replaced[m],
            r.truncated[m],
            if m > 0 && r.imputed_words[m] > 0 {
                format!("; {} words without frames filled with zeros", r.imputed_words[m])
            } else {
                String::new()
            }
        );
    }
    if !r.not_in_folds.is_empty() {
        eprintln!(
            "warning: {} labelled videos in no fold, skipped: {}",
            r.not_in_folds.len(),
            list(&r.not_in_folds)
        );
    }
    if !r.folds_not_found.is_empty() {
        eprintln!(
            "warning: {} fold videos not in the label file: {}",
            r.folds_not_found.len(),
            list(&r.folds_not_found)
        );
    }
    if !r.missing.is_empty() {
        let v: Vec<String> = r
            .missing
            .iter()
            .map(|(v, m)| format!("{v} (no {m})"))
            .collect();
        eprintln!(
            "warning: {} videos skipped (--skip-missing): {}",
            v.len(),
            list(&v)
        );
    }
    if !r.dropped_segments.is_empty() {
        eprintln!(
            "warning: {} segments dropped (zero length, or no elements of some modality): {}",
            r.dropped_segments.len(),
            list(&r.dropped_segments)
        );
    }
}

/// Runs `mica import-csd`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    let inputs = args.inputs();
    check_output(
        &args.out,
        &[&inputs.text, &inputs.audio, &inputs.vision, &inputs.labels],
    )?;
    let opts = ImportOptions {
        align: if args.align == "words" {
            AlignMode::Words
        } else {
            AlignMode::Unaligned
        },
        lengths: [args.text_len, args.audio_len, args.vision_len],
        folds: args.folds()?,
        skip_missing: args.skip_missing,
    };
    let t0 = std::time::Instant::now();
    let (manifest, report) = csd_import::import_to_dir(&inputs, &opts, &args.out)
        .with_context(|| format!("importing into {}", args.out.display()))?;
    for name in csd_import::SPLITS {
        let e = &manifest.splits[name];
        let shapes: Vec<String> = MODALITIES
            .iter()
            .map(|m| format!("{m} {:?}", e.shapes.get(*m).cloned().unwrap_or_default()))
            .collect();
        eprintln!("split {name}: {} segments; {}", e.n, shapes.join(", "));
    }
    print_report(&report);
    eprintln!(
        "wrote {} ({:.1}s)",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
