//! `mica ablate`: the paper's Table 5. Trains every ablation row (MulT, backbone, mmd,
//! mica, mica-nopropagate) over the same seeds, data and options, then writes
//! `ablation.md` and `ablation.json`: mean ± std per metric per row and paired t-tests
//! (paired by seed) of each row against the backbone and MulT rows. The runs are planned
//! first (`OUT/manifest.json`), then trained here, in a local pool (`--jobs N`) or as a
//! Slurm array (`--executor slurm`); `--aggregate OUT` makes the tables from the finished
//! runs at any time, `--status OUT` shows where every run stands.

use super::common::{ConfigArgs, DataArgs};
use super::plan::{data_spec, execute, finished_runs, print_status, ExecArgs};
use super::runs::{data_name, seed_dir};
use crate::analysis::ablation::{ablation_table, render_markdown, RowRuns};
use crate::config::Variant;
use crate::data::Dataset;
use crate::sweep::manifest::{Manifest, RunEntry};
use crate::train::trainer::atomic_write;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Trains the ablation rows over several seeds and tabulates them (Table 5).
#[derive(Args, Debug)]
pub struct AblateArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Every training option applies to all rows alike (`--variant` is replaced by
    /// `--variants`). Alignment weights never reach the rows without alignment: `--alpha`
    /// and `--beta` are ignored for `mult` and `backbone`, `--beta` for `mmd`.
    #[command(flatten)]
    pub cfg: ConfigArgs,
    /// Training seeds, comma-separated; runs are paired by seed in the t-tests.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1111,1112,1113,1114,1115"
    )]
    pub seeds: Vec<u64>,
    /// Rows to train, comma-separated (default: mult,backbone,mmd,mica,mica-nopropagate).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub variants: Option<Vec<Variant>>,
    /// Output directory: runs go to OUT/<variant>/seed-<seed>/, tables to OUT/ablation.*
    /// (default: runs/ablate-<data>). Finished runs found there are reused, killed ones
    /// continued, so re-running the same command resumes an interrupted ablation.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No per-epoch lines (the per-run progress lines stay).
    #[arg(long)]
    pub quiet: bool,
    /// Executor, status and aggregation options.
    #[command(flatten)]
    pub exec: ExecArgs,
}

/// The options of one row: the shared ones with the row's variant, minus the alignment
/// weights that the row must not have.
pub fn row_config_args(base: &ConfigArgs, v: Variant) -> ConfigArgs {
    let mut c = base.clone();
    c.variant = Some(v);
    match v {
        Variant::Mult
        | Variant::Backbone
        | Variant::EfLstm
        | Variant::LfLstm
        | Variant::Raven
        | Variant::Mctn
        | Variant::Mfm
        | Variant::Gmfn => {
            c.alpha = None;
            c.beta = None;
        }
        Variant::Mmd => c.beta = None,
        Variant::Mica | Variant::MicaNopropagate => {}
    }
    c
}

/// Removes repeated entries, keeping the first occurrence.
pub fn dedup_keep_order<T: PartialEq + Clone>(v: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}

/// The plan of `mica ablate`: one run per row and seed, `<variant>/seed-<seed>`.
pub fn plan(a: &AblateArgs, ds: &Dataset) -> Result<Manifest> {
    let seeds = dedup_keep_order(&a.seeds);
    let variants = dedup_keep_order(
        &a.variants
            .clone()
            .unwrap_or_else(|| Variant::ABLATION.to_vec()),
    );
    ensure!(!seeds.is_empty(), "--seeds: give at least one seed");
    ensure!(
        !variants.is_empty(),
        "--variants: give at least one variant"
    );
    let mut runs = Vec::new();
    for &v in &variants {
        let cargs = row_config_args(&a.cfg, v);
        for &seed in &seeds {
            let config = cargs
                .build(&a.data, ds, seed)
                .with_context(|| format!("options of row {}", v.name()))?;
            runs.push(RunEntry {
                id: format!("{}/seed-{seed}", v.name()),
                seed,
                labels: BTreeMap::from([("variant".to_string(), v.name().to_string())]),
                config,
            });
        }
    }
    let aggregate = serde_json::json!({
        "data": data_name(&a.data),
        "seeds": seeds,
        "variants": variants.iter().map(|v| v.name()).collect::<Vec<_>>(),
    });
    Manifest::new("ablate", data_spec(&a.data, ds), aggregate, runs)
}

/// Runs `mica ablate`.
pub fn run(a: &AblateArgs) -> Result<()> {
    if let Some(dir) = &a.exec.status {
        return print_status(dir);
    }
    if let Some(dir) = &a.exec.aggregate {
        return aggregate_dir(dir);
    }
    if a.cfg.variant.is_some() {
        bail!("mica ablate trains several variants: use --variants (e.g. --variants backbone,mica), not --variant");
    }
    a.exec.check()?;
    let ds = a.data.load()?;
    let m = plan(a, &ds)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("ablate-{}", data_name(&a.data))));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if execute(&out, &m, &ds, &a.exec, a.quiet)? {
        aggregate(&out, &m)?;
    }
    Ok(())
}

/// `--aggregate DIR`: the tables (or CSV and plot) of whatever command planned DIR.
pub fn aggregate_dir(dir: &Path) -> Result<()> {
    let m = crate::sweep::manifest::read(dir)?;
    match m.kind.as_str() {
        "ablate" => aggregate(dir, &m),
        "sweep" => super::sweep::aggregate(dir, &m),
        "grid" => super::grid::aggregate(dir, &m),
        k => bail!("{}: unknown plan kind `{k}`", dir.display()),
    }
}

/// Table 5 from the finished runs of an ablation plan: `OUT/ablation.{md,json}`.
pub fn aggregate(out: &Path, m: &Manifest) -> Result<()> {
    let t0 = Instant::now();
    let done = finished_runs(out, m)?;
    let name = m.aggregate["data"].as_str().unwrap_or("data").to_string();
    let variants: Vec<String> = serde_json::from_value(m.aggregate["variants"].clone())
        .context("manifest.json: bad `aggregate.variants`")?;
    let seeds: Vec<u64> = serde_json::from_value(m.aggregate["seeds"].clone())
        .context("manifest.json: bad `aggregate.seeds`")?;
    let mut rows = Vec::new();
    let mut run_list = Vec::new();
    for v in &variants {
        let mut runs = BTreeMap::new();
        for (e, metrics) in &done {
            if e.labels.get("variant") == Some(v) {
                run_list.push(serde_json::json!({
                    "variant": v, "seed": e.seed, "dir": out.join(&e.id), "test": metrics,
                }));
                runs.insert(e.seed, metrics.clone());
            }
        }
        if !runs.is_empty() {
            rows.push(RowRuns {
                name: v.clone(),
                runs,
            });
        }
    }
    let table = ablation_table(&rows);
    let md = render_markdown(
        &table,
        &format!("Table 5: ablation on {name} ({} seeds)", seeds.len()),
    );
    let json = serde_json::json!({
        "data": name,
        "seeds": seeds,
        "variants": variants,
        "table": table,
        "runs": run_list,
    });
    atomic_write(&out.join("ablation.md"), md.as_bytes())?;
    atomic_write(
        &out.join("ablation.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    println!("{md}");
    eprintln!(
        "wrote {} and {} ({:.1}s)",
        out.join("ablation.md").display(),
        out.join("ablation.json").display(),
        t0.elapsed().as_secs_f64()
    );
    let has = |v: &str| rows.iter().any(|r| r.name == v);
    if let (true, true, Some(&s)) = (has("mica"), has("backbone"), seeds.first()) {
        eprintln!(
            "Table 6 next: mica analyze --checkpoint {} --checkpoint {}",
            seed_dir(&out.join("mica"), s).join("best").display(),
            seed_dir(&out.join("backbone"), s).join("best").display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_never_get_foreign_alignment_weights() {
        let base = ConfigArgs {
            alpha: Some(0.5),
            beta: Some(0.2),
            ..Default::default()
        };
        let b = row_config_args(&base, Variant::Backbone);
        assert_eq!(
            (b.alpha, b.beta, b.variant),
            (None, None, Some(Variant::Backbone))
        );
        let m = row_config_args(&base, Variant::Mmd);
        assert_eq!((m.alpha, m.beta), (Some(0.5), None));
        let f = row_config_args(&base, Variant::Mica);
        assert_eq!((f.alpha, f.beta), (Some(0.5), Some(0.2)));
        assert_eq!(dedup_keep_order(&[3, 1, 3, 2, 1]), vec![3, 1, 2]);
    }
}
