//! `mica train`: the main job. With no argument it trains the `mica` variant on the
//! built-in `synth-small` benchmark and prints the test metrics.

use super::common::{ConfigArgs, DataArgs};
use crate::eval::{aggregate, Metrics};
use crate::train::rundir;
use crate::train::trainer::{train, TrainOptions};
use anyhow::{ensure, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

/// Trains a model (one or several seeds) and evaluates the best-on-validation weights on test.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Seed of init, shuffling, dropout and MMD sampling [default: 1111].
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Several seeds, comma-separated (e.g. 1111,1112,1113,1114,1115): one run each, then
    /// mean ± std per metric.
    #[arg(long, value_delimiter = ',')]
    pub seeds: Option<Vec<u64>>,
    /// Run directory (default: runs/<dataset>-<variant>-<time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the killed run in this directory: its saved config and recorded data are
    /// used; --epochs may raise the epoch count, other config options are refused.
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
        return resume(a, dir, t0);
    }
    let seeds = a
        .seeds
        .clone()
        .unwrap_or_else(|| vec![a.seed.unwrap_or(1111)]);
    ensure!(!seeds.is_empty(), "--seeds: give at least one seed");
    for (i, s) in seeds.iter().enumerate() {
        ensure!(
            !seeds[..i].contains(s),
            "--seeds: seed {s} appears twice (each seed is one run): list distinct seeds"
        );
    }
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
    // Refuse a bad --out before the data is read or anything trained.
    if seeds.len() == 1 {
        rundir::ensure_fresh(&base)?;
    } else {
        ensure_multi_seed_dir(&base)?;
        for &seed in &seeds {
            rundir::ensure_fresh(&base.join(format!("seed-{seed}")))?;
        }
    }
    let ds = a.data.load()?;
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
            data_source: Some(a.data.source()),
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

/// A multi-seed `--out` holds only `seed-*` run directories and `summary.json` (or is
/// empty): anything else is not mica's to write into.
fn ensure_multi_seed_dir(base: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(base) else {
        return Ok(());
    };
    for e in entries {
        let e = e.with_context(|| format!("{}: cannot list", base.display()))?;
        let name = e.file_name().to_string_lossy().to_string();
        let ours = name == "summary.json"
            || crate::durable::is_leftover(&name)
            || (name.starts_with("seed-") && e.path().is_dir());
        ensure!(
            ours,
            "--out {}: exists and holds `{name}`, which is not part of a mica multi-seed run: choose another --out (nothing was written)",
            base.display()
        );
    }
    Ok(())
}

/// `--resume RUN_DIR`: continues a run with its saved config and its recorded data.
fn resume(a: &TrainArgs, dir: &Path, t0: std::time::Instant) -> Result<()> {
    ensure!(
        dir.is_dir(),
        "--resume {}: no such directory",
        dir.display()
    );
    let seeds: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list", dir.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("seed-"))
        .collect();
    ensure!(
        seeds.is_empty() || dir.join("config.json").is_file(),
        "--resume {}: holds a multi-seed run: resume each seed's directory (e.g. --resume {})",
        dir.display(),
        dir.join(&seeds[0]).display()
    );
    ensure!(
        rundir::dir_state(dir)? == rundir::DirState::Run,
        "--resume {}: no run to continue there (no config.json; a run killed before it wrote its config): start it again with the same options and --out {}",
        dir.display(),
        dir.display()
    );
    let mut cfg = crate::config::Config::from_file(&dir.join("config.json"))
        .with_context(|| format!("--resume {}: not a run directory", dir.display()))?;
    let conflicts = resume_conflicts(a, &cfg)?;
    ensure!(
        conflicts.is_empty(),
        "--resume {}: a resumed run keeps its config, and these options differ from it: {}; only --epochs may change (to train longer): drop them, or start a new run with another --out",
        dir.display(),
        conflicts.join(", ")
    );
    let info = rundir::read_info(dir)?;
    let builtin_flags = a.data.dataset != "synth-small" || a.data.data_seed != 0;
    let (ds, source) = match (&a.data.data, &info) {
        (Some(_), _) | (None, None) => (a.data.load()?, a.data.source()),
        (None, Some(_)) if builtin_flags => (a.data.load()?, a.data.source()),
        (None, Some(info)) => match info.data.builtin() {
            Some((name, seed)) => (
                crate::data::source::load_dataset(None, name, seed)?,
                info.data.source.clone(),
            ),
            None => {
                let p = PathBuf::from(&info.data.source);
                ensure!(
                    p.exists(),
                    "--resume {}: the run's data {} is gone: pass --data with the same data",
                    dir.display(),
                    p.display()
                );
                (
                    crate::data::source::load_dataset(Some(&p), "synth-small", 0)?,
                    info.data.source.clone(),
                )
            }
        },
    };
    if let Some(n) = a.cfg.epochs {
        if n != cfg.train.epochs {
            let done = crate::train::trainer::epochs_done(dir)?;
            ensure!(
                n >= done,
                "--resume {}: --epochs {n}, but the run has already trained {done} epochs",
                dir.display()
            );
            eprintln!(
                "--epochs {n}: the run continues to epoch {n} (it was set to {})",
                cfg.train.epochs
            );
            cfg.train.epochs = n;
            crate::train::trainer::atomic_write(
                &dir.join("config.json"),
                serde_json::to_string_pretty(&cfg)?.as_bytes(),
            )?;
        }
    }
    let opts = TrainOptions {
        out: dir.to_path_buf(),
        resume: true,
        stop_after_epochs: a.stop_after_epochs,
        verbose: !a.quiet,
        data_source: Some(source),
    };
    let r = train(&cfg, &ds, &opts)?;
    report_one(&r.test, dir, t0);
    Ok(())
}

/// The options given with `--resume` that differ from the run's saved config, as
/// `--flag VALUE (the run's: VALUE)`. `--epochs` is not among them (it may change).
fn resume_conflicts(a: &TrainArgs, cfg: &crate::config::Config) -> Result<Vec<String>> {
    let c = &a.cfg;
    let mut out = Vec::new();
    let mut check = |flag: &str, given: Option<String>, saved: String| {
        if let Some(g) = given {
            if g != saved {
                out.push(format!("{flag} {g} (the run's: {saved})"));
            }
        }
    };
    let (t, al, m) = (&cfg.train, &cfg.align, &cfg.model);
    check("--seed", a.seed.map(|x| x.to_string()), t.seed.to_string());
    check(
        "--variant",
        c.variant.map(|v| v.name().to_string()),
        cfg.variant.name().to_string(),
    );
    check(
        "--task",
        c.task.map(|v| v.name().to_string()),
        cfg.task.name().to_string(),
    );
    check(
        "--batch-size",
        c.batch_size.map(|x| x.to_string()),
        t.batch_size.to_string(),
    );
    check("--lr", c.lr.map(|x| x.to_string()), t.lr.to_string());
    check("--clip", c.clip.map(|x| x.to_string()), t.clip.to_string());
    check("--when", c.when.map(|x| x.to_string()), t.when.to_string());
    check(
        "--alpha",
        c.alpha.map(|x| x.to_string()),
        al.alpha.to_string(),
    );
    check("--beta", c.beta.map(|x| x.to_string()), al.beta.to_string());
    check("--tau", c.tau.map(|x| x.to_string()), al.tau.to_string());
    check("--d", c.d.map(|x| x.to_string()), m.d.to_string());
    check(
        "--heads",
        c.heads.map(|x| x.to_string()),
        m.num_heads.to_string(),
    );
    check(
        "--layers",
        c.layers.map(|x| x.to_string()),
        m.layers.to_string(),
    );
    check(
        "--kernels",
        c.kernels.as_ref().map(|k| k.replace(' ', "")),
        format!("{},{},{}", m.kernel_l, m.kernel_a, m.kernel_v),
    );
    check(
        "--kv-source",
        c.kv_source.map(|v| format!("{v:?}")),
        format!("{:?}", m.kv_source),
    );
    check(
        "--gate-bias",
        c.gate_bias.map(|v| format!("{v:?}")),
        format!("{:?}", m.gate_bias),
    );
    check(
        "--attention",
        c.attention.map(|v| format!("{v:?}")),
        format!("{:?}", m.attention),
    );
    check(
        "--positions",
        c.positions.map(|v| format!("{v:?}")),
        format!("{:?}", m.positions),
    );
    if c.no_attn_mask && m.attn_mask {
        out.push("--no-attn-mask (the run's: mask on)".into());
    }
    if let Some(p) = c.preset {
        out.push(format!("--preset {p:?}"));
    }
    if let Some(p) = &c.config {
        out.push(format!("--config {}", p.display()));
    }
    for s in &c.set {
        let mut changed = cfg.clone();
        changed.set(s)?;
        if changed != *cfg {
            out.push(format!("--set {s}"));
        }
    }
    if a.seeds.is_some() {
        out.push("--seeds (a run has one seed)".into());
    }
    Ok(out)
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
