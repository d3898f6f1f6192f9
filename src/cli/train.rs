//! `mica train`: the main job. With no argument it trains the `mica` variant on the
//! built-in `synth-small` benchmark and prints the test metrics.

use super::common::{ConfigArgs, DataArgs};
use crate::eval::{aggregate, Metrics};
use crate::train::trainer::{train, TrainOptions};
use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Trains a model (one or several seeds) and evaluates the best-on-validation weights on test.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Seed of init, shuffling, dropout and MMD sampling.
    #[arg(long, default_value_t = 1111, conflicts_with = "seeds")]
    pub seed: u64,
    /// Several seeds, comma-separated (e.g. 1111,1112,1113,1114,1115): one run each, then
    /// mean ± std per metric.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Run directory (default: runs/<dataset>-<variant>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the killed run in this directory (its saved config is used).
    #[arg(long, value_name = "RUN_DIR", conflicts_with = "out")]
    pub resume: Option<PathBuf>,
    /// No progress bars or per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
    /// Stop after this many epochs as if killed (for testing --resume).
    #[arg(long, hide = true)]
    pub stop_after_epochs: Option<usize>,
}

/// A timestamp for default run names (UTC, `YYYYmmdd-HHMMSS`).
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Runs `mica train`.
pub fn run(a: &TrainArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    if let Some(dir) = &a.resume {
        let cfg = crate::config::Config::from_file(&dir.join("config.json"))
            .with_context(|| format!("--resume {}: not a run directory", dir.display()))?;
        let ds = a.data.load()?;
        let opts = TrainOptions {
            out: dir.clone(),
            resume: true,
            stop_after_epochs: a.stop_after_epochs,
            verbose: !a.quiet,
        };
        let r = train(&cfg, &ds, &opts)?;
        report_one(&r.test, dir, t0);
        return Ok(());
    }
    let ds = a.data.load()?;
    let seeds = a.seeds.clone().unwrap_or_else(|| vec![a.seed]);
    let variant = a.cfg.variant.unwrap_or(crate::config::Variant::Mica);
    let base = a.out.clone().unwrap_or_else(|| {
        let name = a
            .data
            .data
            .as_ref()
            .and_then(|p| p.file_stem())
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| a.data.dataset.clone());
        PathBuf::from("runs").join(format!("{name}-{}-{}", variant.name(), timestamp()))
    });
    let mut results: Vec<Metrics> = Vec::new();
    for &seed in &seeds {
        let cfg = a.cfg.build(&a.data, &ds, seed)?;
        let out = if seeds.len() == 1 {
            base.clone()
        } else {
            base.join(format!("seed-{seed}"))
        };
        if !a.quiet {
            eprintln!(
                "training {} on {} (task {}, seed {seed}, {} epochs) into {}",
                cfg.variant.name(),
                a.data
                    .data
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| a.data.dataset.clone()),
                cfg.task.name(),
                cfg.train.epochs,
                out.display()
            );
        }
        let opts = TrainOptions {
            out: out.clone(),
            resume: false,
            stop_after_epochs: a.stop_after_epochs,
            verbose: !a.quiet,
        };
        let r = train(&cfg, &ds, &opts)?;
        if seeds.len() == 1 {
            report_one(&r.test, &out, t0);
            report_probes(&ds, &r.test);
        }
        results.push(r.test);
    }
    if seeds.len() > 1 {
        let agg = aggregate(&results);
        let json = serde_json::json!({ "seeds": seeds, "test": agg.to_json() });
        crate::train::trainer::atomic_write(
            &base.join("summary.json"),
            serde_json::to_string_pretty(&json)?.as_bytes(),
        )?;
        println!(
            "test metrics over {} seeds (mean ± population std):\n{}",
            seeds.len(),
            agg.table()
        );
        eprintln!(
            "summary: {} ({:.1}s)",
            base.join("summary.json").display(),
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// On the built-in benchmark, one line putting the model's test Corr between the two
/// closed-form probes (the aligned oracle and the pooled baseline).
fn report_probes(ds: &crate::data::Dataset, test: &Metrics) {
    let Metrics::Sentiment { mult, .. } = test else {
        return;
    };
    if ds.format != "synth" {
        return;
    }
    if let Ok(p) = crate::data::synth::probe::probe(ds) {
        println!(
            "test Corr {:.3}: the aligned oracle (true alignment, known rule) reaches {:.3}, \
             the pooled baseline (no alignment) {:.3} on this data",
            mult.corr, p.aligned_r, p.pooled_r
        );
    }
}

fn report_one(test: &Metrics, out: &std::path::Path, t0: std::time::Instant) {
    println!(
        "test metrics (best-on-validation weights):\n{}",
        test.table()
    );
    eprintln!(
        "run directory: {} ({:.1}s)",
        out.display(),
        t0.elapsed().as_secs_f64()
    );
}
