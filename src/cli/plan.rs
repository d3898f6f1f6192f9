//! What the many-run commands (`ablate`, `sweep`, `grid`) share: the executor options,
//! writing the plan (`OUT/manifest.json`), executing it in this process, in a local pool
//! of `mica run-task` children or as a Slurm job array, `--status`, and the hidden
//! `mica run-task OUT --id ID` that trains one planned run (with its lock).

use super::common::DataArgs;
use super::runs::{read_test_metrics, summary_line, train_or_reuse, RunStatus};
use crate::analysis::ablation::FlatMetrics;
use crate::data::Dataset;
use crate::sweep::lock::{self, RunLock};
use crate::sweep::manifest::{self, DataSpec, Manifest, RunEntry};
use crate::sweep::status::{self, RunState};
use crate::sweep::{local, slurm};
use anyhow::{bail, ensure, Context, Result};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Where the runs execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Executor {
    /// On this machine (`--jobs N` at a time).
    #[default]
    Local,
    /// As a Slurm job array (one run per task) plus an aggregation job.
    Slurm,
}

/// Options of the many-run commands: executor, `--status`, `--aggregate`.
#[derive(Args, Debug, Clone, Default)]
pub struct ExecArgs {
    /// Where the runs execute: local (this machine) or slurm (a job array on a cluster
    /// with a shared file system; the aggregation job runs when all tasks succeeded).
    #[arg(long, value_enum, default_value = "local")]
    pub executor: Executor,
    /// Runs at a time: local: child processes, the machine's cores (or --threads when
    /// above 1) divided between them; slurm: the array's `%N` throttle (default: none).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// With --executor slurm: write the plan and the scripts (OUT/slurm/*.sh), submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Slurm: CPUs per array task (each run's --threads).
    #[arg(long, default_value_t = 1)]
    pub slurm_cpus: usize,
    /// Slurm: memory per task (sbatch --mem, e.g. 4G).
    #[arg(long)]
    pub slurm_mem: Option<String>,
    /// Slurm: time limit per task (sbatch --time, e.g. 02:00:00).
    #[arg(long)]
    pub slurm_time: Option<String>,
    /// Slurm: partition.
    #[arg(long)]
    pub slurm_partition: Option<String>,
    /// Slurm: any other sbatch option, one per flag (e.g. --slurm-opt=--account=abc).
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true)]
    pub slurm_opt: Vec<String>,
    /// Show the state of every run planned in DIR (pending, running, done, failed with
    /// the last error line, interrupted) and exit; works whichever executor ran them.
    #[arg(long, value_name = "DIR", conflicts_with = "aggregate")]
    pub status: Option<PathBuf>,
    /// Only aggregate the finished runs planned in DIR (tables, plots, tests) and exit.
    #[arg(long, value_name = "DIR")]
    pub aggregate: Option<PathBuf>,
}

impl ExecArgs {
    /// The Slurm options these flags give.
    pub fn slurm_options(&self) -> slurm::SlurmOptions {
        slurm::SlurmOptions {
            cpus: self.slurm_cpus,
            mem: self.slurm_mem.clone(),
            time: self.slurm_time.clone(),
            partition: self.slurm_partition.clone(),
            max_running: self.jobs,
            extra: self.slurm_opt.clone(),
        }
    }

    /// Refuses combinations that make no sense, before anything is written.
    pub fn check(&self) -> Result<()> {
        ensure!(self.jobs != Some(0), "--jobs 0: give 1 or more");
        if self.executor == Executor::Local {
            ensure!(!self.dry_run, "--dry-run goes with --executor slurm");
            let slurm_flag = [
                (self.slurm_mem.is_some(), "--slurm-mem"),
                (self.slurm_time.is_some(), "--slurm-time"),
                (self.slurm_partition.is_some(), "--slurm-partition"),
                (!self.slurm_opt.is_empty(), "--slurm-opt"),
                (self.slurm_cpus != 1, "--slurm-cpus"),
            ]
            .into_iter()
            .find(|(given, _)| *given);
            if let Some((_, flag)) = slurm_flag {
                bail!("{flag} goes with --executor slurm");
            }
        } else {
            self.slurm_options().check()?;
        }
        Ok(())
    }
}

/// The data spec a plan records, from the command's data options and the loaded data.
pub fn data_spec(a: &DataArgs, ds: &Dataset) -> DataSpec {
    DataSpec {
        data: a
            .data
            .as_ref()
            .map(|p| p.canonicalize().unwrap_or_else(|_| p.clone())),
        dataset: a.dataset.clone(),
        data_seed: a.data_seed,
        drop_nonfinite_labels: a.drop_nonfinite_labels,
        source: a.source(),
        sha256: crate::data::fingerprint::fingerprint(ds),
    }
}

/// Loads a plan's data again (in a task) and checks it is the data planned on.
pub fn load_planned_data(m: &Manifest) -> Result<Dataset> {
    let d = &m.data;
    let args = DataArgs {
        data: d.data.clone(),
        dataset: d.dataset.clone(),
        data_seed: d.data_seed,
        drop_nonfinite_labels: d.drop_nonfinite_labels,
    };
    let ds = args.load()?;
    let sha = crate::data::fingerprint::fingerprint(&ds);
    ensure!(
        sha == d.sha256,
        "the data {} changed since the runs were planned (sha256 {} then, {} now): plan again on the new data with another --out",
        d.source,
        &d.sha256[..12.min(d.sha256.len())],
        &sha[..12]
    );
    Ok(ds)
}

/// Trains (or reuses, or resumes) one planned run under its lock; a failure is recorded
/// beside the run (`OUT/<id>.failed`, shown by `--status`) and returned.
pub fn train_entry(
    out: &Path,
    m: &Manifest,
    e: &RunEntry,
    ds: &Dataset,
    verbose: bool,
) -> Result<(FlatMetrics, RunStatus)> {
    let dir = Manifest::run_dir(out, e);
    if let Some(p) = dir.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let failed = lock::sidecar(out, &e.id, "failed");
    let _lock = RunLock::acquire(&lock::sidecar(out, &e.id, "lock"), &format!("run {}", e.id))?;
    let r = train_or_reuse(&e.config, ds, &m.data.source, &dir, verbose)
        .with_context(|| format!("run {}", e.id));
    match &r {
        Ok(_) => {
            if failed.exists() {
                std::fs::remove_file(&failed)
                    .with_context(|| format!("removing {}", failed.display()))?;
            }
        }
        Err(err) => {
            let _ = crate::durable::write_atomic(&failed, format!("error: {err:#}\n").as_bytes());
        }
    }
    r
}

/// `mica run-task`: trains one run of a plan (used by the local pool and Slurm tasks).
#[derive(Args, Debug)]
pub struct RunTaskArgs {
    /// The output directory holding manifest.json.
    pub dir: PathBuf,
    /// The run's id (its directory under DIR, e.g. mica/seed-1111).
    #[arg(long, conflicts_with = "index", required_unless_present = "index")]
    pub id: Option<String>,
    /// The run's position in the manifest (0-based).
    #[arg(long)]
    pub index: Option<usize>,
    /// No per-epoch lines.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `mica run-task`.
pub fn run_task(a: &RunTaskArgs) -> Result<()> {
    let t = Instant::now();
    let m = manifest::read(&a.dir)?;
    let e = match (&a.id, a.index) {
        (Some(id), _) => m
            .entry(id)
            .with_context(|| format!("{}: no run `{id}` in its manifest", a.dir.display()))?,
        (None, Some(k)) => m.runs.get(k).with_context(|| {
            format!(
                "--index {k}: {} plans {} runs (0 to {})",
                a.dir.display(),
                m.runs.len(),
                m.runs.len().saturating_sub(1)
            )
        })?,
        (None, None) => bail!("give --id or --index"),
    };
    let ds = load_planned_data(&m).with_context(|| format!("run {}", e.id))?;
    let (metrics, st) = train_entry(&a.dir, &m, e, &ds, !a.quiet)?;
    println!(
        "{}: {} in {:.1}s | {}",
        e.id,
        st.word(),
        t.elapsed().as_secs_f64(),
        summary_line(&metrics)
    );
    Ok(())
}

/// `--status DIR`: prints every run's state.
pub fn print_status(dir: &Path) -> Result<()> {
    let m = manifest::read(dir)?;
    let st = status::states(dir, &m);
    print!("{}", status::render(&m, &st));
    Ok(())
}

/// The finished runs of a plan with their test metrics (the others are named on stderr).
pub fn finished_runs(out: &Path, m: &Manifest) -> Result<Vec<(RunEntry, FlatMetrics)>> {
    let mut done = Vec::new();
    let mut missing = Vec::new();
    for e in &m.runs {
        let p = Manifest::run_dir(out, e).join("metrics.json");
        if p.is_file() {
            done.push((e.clone(), read_test_metrics(&p)?));
        } else {
            missing.push(e.id.clone());
        }
    }
    ensure!(
        !done.is_empty(),
        "{}: none of its {} runs has finished yet (see --status {})",
        out.display(),
        m.runs.len(),
        out.display()
    );
    if !missing.is_empty() {
        eprintln!(
            "note: aggregating {} of {} runs; not finished: {}",
            done.len(),
            m.runs.len(),
            missing.join(", ")
        );
    }
    Ok(done)
}

/// Writes the plan and executes it with the chosen executor. Returns true when every run
/// is done here and now (aggregate next), false when the runs were handed to Slurm.
pub fn execute(out: &Path, m: &Manifest, ds: &Dataset, x: &ExecArgs, quiet: bool) -> Result<bool> {
    manifest::write(out, m)?;
    let total = m.runs.len();
    match x.executor {
        Executor::Local if x.jobs.unwrap_or(1) <= 1 => {
            for (k, e) in m.runs.iter().enumerate() {
                let dir = Manifest::run_dir(out, e);
                // `mica seed 2`, as these lines always read.
                let name = e.id.replace("/seed-", " seed ");
                eprintln!(
                    "[{}/{total}] {name} ({} epochs) -> {}",
                    k + 1,
                    e.config.train.epochs,
                    dir.display()
                );
                let t = Instant::now();
                let (metrics, st) = train_entry(out, m, e, ds, !quiet)?;
                eprintln!(
                    "[{}/{total}] {name}: {} in {:.1}s | {}",
                    k + 1,
                    st.word(),
                    t.elapsed().as_secs_f64(),
                    summary_line(&metrics)
                );
            }
            Ok(true)
        }
        Executor::Local => {
            let jobs = x.jobs.unwrap_or(1);
            let given = candle_core::utils::get_num_threads();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = local::threads_per_job(if given > 1 { given } else { cores }, jobs);
            let todo: Vec<String> = m
                .runs
                .iter()
                .filter(|e| status::run_state(out, e) != RunState::Done)
                .map(|e| e.id.clone())
                .collect();
            eprintln!(
                "{total} runs, {} to train: {jobs} at a time, {threads} thread(s) each; logs in {}/<run>.log",
                todo.len(),
                out.display()
            );
            let exe = std::env::current_exe().context("cannot find the mica binary")?;
            let mut k = total - todo.len();
            let ends = local::run_pool(&exe, out, &todo, jobs, threads, |end| {
                k += 1;
                let word = if end.ok { "ok" } else { "FAILED" };
                eprintln!(
                    "[{k}/{total}] {word} ({:.1}s) {}",
                    end.seconds, end.last_line
                );
            })?;
            let failed: Vec<&local::TaskEnd> = ends.iter().filter(|e| !e.ok).collect();
            if !failed.is_empty() {
                bail!(
                    "{} of {} runs failed ({}); finished runs are kept, killed ones resume: run the same command again, see --status {}",
                    failed.len(),
                    todo.len(),
                    failed
                        .iter()
                        .map(|e| format!("{}: {}", e.id, e.last_line))
                        .collect::<Vec<_>>()
                        .join("; "),
                    out.display()
                );
            }
            Ok(true)
        }
        Executor::Slurm => submit(out, m, x),
    }
}

fn submit(out: &Path, m: &Manifest, x: &ExecArgs) -> Result<bool> {
    let states = status::states(out, m);
    let running: Vec<&str> = states
        .iter()
        .filter(|(_, s)| matches!(s, RunState::Running { .. }))
        .map(|(id, _)| id.as_str())
        .collect();
    if !running.is_empty() {
        eprintln!(
            "not submitted, being trained by another process now: {}",
            running.join(", ")
        );
    }
    let todo: Vec<String> = states
        .iter()
        .filter(|(_, s)| !matches!(s, RunState::Done | RunState::Running { .. }))
        .map(|(id, _)| id.clone())
        .collect();
    if todo.is_empty() && running.is_empty() {
        eprintln!("all {} runs are done: nothing to submit", m.runs.len());
        return Ok(true);
    }
    ensure!(
        !todo.is_empty(),
        "nothing to submit: the unfinished runs are all being trained by other processes (see --status {})",
        out.display()
    );
    let out_abs = out
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", out.display()))?;
    let exe = std::env::current_exe().context("cannot find the mica binary")?;
    let o = x.slurm_options();
    let name = format!("mica-{}", m.kind);
    let array = slurm::array_script(&exe, &out_abs, &name, &todo, &o);
    let agg = slurm::aggregate_script(&exe, &out_abs, &m.kind, &name, &o);
    let (a, g) = slurm::script_paths(out);
    match slurm::write_and_submit(out, &array, &agg, x.dry_run)? {
        None => {
            eprintln!(
                "wrote {} ({} runs of {}) and {}; submit with:\n  jid=$(sbatch --parsable {})\n  sbatch --dependency=afterok:$jid {}",
                a.display(),
                todo.len(),
                m.runs.len(),
                g.display(),
                a.display(),
                g.display()
            );
        }
        Some((aid, gid)) => {
            println!(
                "submitted array job {aid} ({} runs) and aggregation job {gid}",
                todo.len()
            );
            eprintln!(
                "follow with: squeue -j {aid},{gid}   or   mica {} --status {}",
                m.kind,
                out.display()
            );
        }
    }
    Ok(false)
}
