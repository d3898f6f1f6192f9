//! `mica ablate`: the paper's Table 5. Trains every ablation row (MulT, backbone, mmd,
//! mica, mica-nopropagate) over the same seeds, data and options, then writes
//! `ablation.md` and `ablation.json`: mean ± std per metric per row and paired t-tests
//! (paired by seed) of each row against the backbone and MulT rows.

use super::common::{ConfigArgs, DataArgs};
use super::runs::{data_name, seed_dir, summary_line, train_or_reuse};
use crate::analysis::ablation::{ablation_table, render_markdown, RowRuns};
use crate::config::Variant;
use crate::train::trainer::atomic_write;
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use std::collections::BTreeMap;
use std::path::PathBuf;
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
        | Variant::Mctn => {
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

/// Runs `mica ablate`.
pub fn run(a: &AblateArgs) -> Result<()> {
    if a.cfg.variant.is_some() {
        bail!("mica ablate trains several variants: use --variants (e.g. --variants backbone,mica), not --variant");
    }
    let t0 = Instant::now();
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
    let ds = a.data.load()?;
    let name = data_name(&a.data);
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("ablate-{name}")));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let total = seeds.len() * variants.len();
    let mut rows = Vec::new();
    let mut run_list = Vec::new();
    let mut k = 0;
    for &v in &variants {
        let cargs = row_config_args(&a.cfg, v);
        let mut runs = BTreeMap::new();
        for &seed in &seeds {
            k += 1;
            let cfg = cargs
                .build(&a.data, &ds, seed)
                .with_context(|| format!("options of row {}", v.name()))?;
            let dir = seed_dir(&out.join(v.name()), seed);
            eprintln!(
                "[{k}/{total}] {} seed {seed} ({} epochs) -> {}",
                v.name(),
                cfg.train.epochs,
                dir.display()
            );
            let t = Instant::now();
            let (m, status) = train_or_reuse(&cfg, &ds, &a.data.source(), &dir, !a.quiet)?;
            eprintln!(
                "[{k}/{total}] {} seed {seed}: {} in {:.1}s | {}",
                v.name(),
                status.word(),
                t.elapsed().as_secs_f64(),
                summary_line(&m)
            );
            run_list.push(serde_json::json!({
                "variant": v.name(), "seed": seed, "dir": dir, "test": m,
            }));
            runs.insert(seed, m);
        }
        rows.push(RowRuns {
            name: v.name().to_string(),
            runs,
        });
    }
    let table = ablation_table(&rows);
    let md = render_markdown(
        &table,
        &format!("Table 5: ablation on {name} ({} seeds)", seeds.len()),
    );
    let json = serde_json::json!({
        "data": name,
        "seeds": seeds,
        "variants": variants.iter().map(|v| v.name()).collect::<Vec<_>>(),
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
    if variants.contains(&Variant::Mica) && variants.contains(&Variant::Backbone) {
        eprintln!(
            "Table 6 next: mica analyze --checkpoint {} --checkpoint {}",
            seed_dir(&out.join("mica"), seeds[0]).join("best").display(),
            seed_dir(&out.join("backbone"), seeds[0])
                .join("best")
                .display()
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
