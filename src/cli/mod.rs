//! The `mica` command line: one subcommand per user job. Each subcommand lives in its
//! own file with its clap `Args` struct and a `run` function.

pub mod ablate;
pub mod analyze;
pub mod attention;
pub mod bench;
pub mod common;
pub mod eval;
pub mod grid;
pub mod import_csd;
pub mod metrics;
pub mod model_io;
pub mod plan;
pub mod report;
pub mod runs;
pub mod sweep;
pub mod synth;
pub mod train;

use clap::{Parser, Subcommand};

pub mod convert;
pub mod doctor;
pub mod inspect;

/// mica: train, evaluate and explain MICA / MulT models on asynchronous multimodal sequences.
#[derive(Parser, Debug)]
#[command(name = "mica", version, about, long_about = None)]
pub struct Cli {
    /// CPU threads for tensor operations (default 1: on small shapes and on busy machines
    /// candle's spinning thread pool costs more than it gains; try 2+ for large shapes).
    /// The CANDLE_NUM_THREADS environment variable, when set, wins.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// The job to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every `mica` subcommand.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a model (default: MICA on the built-in synth-small benchmark) and report test metrics.
    Train(train::TrainArgs),
    /// Evaluate a checkpoint on a split: MulT's and MMSA's metric sets.
    Eval(eval::EvalArgs),
    /// Write a checkpoint's predictions on a split to CSV.
    Predict(eval::PredictArgs),
    /// Import official PyTorch MulT weights (safetensors state_dict + hyper-parameter JSON).
    ImportMult(model_io::ImportArgs),
    /// Eval-mode forward of a checkpoint on raw input tensors (safetensors in, safetensors out).
    Forward(model_io::ForwardArgs),
    /// Compute MulT's and MMSA's metrics of a prediction CSV.
    Metrics(metrics::MetricsArgs),
    /// Generate the built-in synthetic asynchronous benchmark (ground-truth alignment).
    Synth(synth::SynthArgs),
    /// Summarise a dataset (MulT / MMSA pickle or mica directory): shapes, dtypes, sums,
    /// non-finite counts.
    Inspect(inspect::Args),
    /// Convert a dataset (MulT / MMSA pickle or mica directory) into mica's own format.
    Convert(convert::Args),
    /// Check a data file or directory: format, protocol, sha256, split sizes and feature
    /// dims against the published datasets, non-finite values, label ranges, sequence
    /// lengths, HTML pages saved as data; for .csd files the videos, dims, intervals,
    /// non-finite values, MOSI / MOSEI standard-fold membership and videos missing across
    /// the files of a directory. Exits non-zero on errors.
    Doctor(doctor::Args),
    /// Build a mica dataset from CMU-MultimodalSDK computational sequences (.csd, HDF5):
    /// word vectors, audio, vision and labels plus folds; unaligned (default, with every
    /// element's start/end time) or averaged onto the words (--align words), as the SDK does.
    ImportCsd(import_csd::Args),
    /// Table 5: train the ablation rows (MulT, backbone, mmd, mica, mica-nopropagate) over
    /// seeds; mean ± std per metric and paired t-tests against backbone and MulT.
    Ablate(ablate::AblateArgs),
    /// Table 6: A-distance between queries and keys and correlation accuracy of the
    /// attention, per crossmodal block, for one or more checkpoints.
    Analyze(analyze::AnalyzeArgs),
    /// Fig. 3: sweep alpha, beta or tau; CSV of the runs and a plot of a metric.
    Sweep(sweep::SweepArgs),
    /// Any config keys × values × seeds (--vary section.key=V1,V2,..); mean ± std per cell.
    Grid(grid::GridArgs),
    /// Train one run of a planned ablation / sweep / grid (used by --jobs and Slurm tasks).
    #[command(hide = true)]
    RunTask(plan::RunTaskArgs),
    /// Fig. 4: a sample's crossmodal attention map as a PNG heatmap (two checkpoints side by side).
    Attention(attention::AttentionArgs),
    /// Gather run metrics, loss curves, tables and plots of directories into one Markdown page.
    Report(report::ReportArgs),
    /// Time a training step and an eval forward at the bench shape or any configuration
    /// (median ms, peak RSS, GFLOP/s).
    Bench(bench::BenchArgs),
}

/// The most CPU threads `--threads` (or `CANDLE_NUM_THREADS` / `RAYON_NUM_THREADS`) may ask for.
pub const MAX_THREADS: usize = 1024;

/// Refuses thread counts outside 1..=[`MAX_THREADS`], from the flag or the environment.
fn check_threads(n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_THREADS).contains(&n),
        "--threads {n}: expected a thread count from 1 to {MAX_THREADS}"
    );
    for var in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if let Some(v) = std::env::var_os(var) {
            let v = v.to_string_lossy();
            let ok = v
                .trim()
                .parse::<usize>()
                .is_ok_and(|k| k <= MAX_THREADS && (k >= 1 || var == "RAYON_NUM_THREADS"));
            anyhow::ensure!(
                ok,
                "{var}={v}: expected a thread count from 1 to {MAX_THREADS}"
            );
        }
    }
    Ok(())
}

/// Sets candle's and rayon's CPU thread counts (and candle's pool spinning) before the
/// pools start (they read the environment once).
fn set_threads(n: usize) {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: called at the start of `main`, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", n.max(1).to_string()) };
    }
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // candle's own pool (its binary ops) spins 25,000 rounds after each op before
        // parking, taking a core from the rayon workers that run everything else: park
        // almost at once instead.
        // SAFETY: as above.
        unsafe { std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "64") };
    }
}

/// Parses the command line and runs the chosen job.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    check_threads(cli.threads)?;
    set_threads(cli.threads);
    // The job runs on a worker of the rayon pool that the parallel ops use (candle's
    // matmul, mica's kernels): the thread that issues an op then works on it too, instead
    // of a third thread waking the pool's workers and sleeping until they finish.
    let n = candle_core::utils::get_num_threads();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("mica-{i}"))
        // candle's backward sorts the graph recursively: room for deep graphs.
        .stack_size(64 << 20)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start {n} worker threads: {e}"))?;
    pool.install(|| run(cli.command))
}

/// Runs one subcommand.
fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Metrics(args) => metrics::run(&args),
        Command::Train(a) => train::run(&a),
        Command::Eval(a) => eval::run_eval(&a),
        Command::Predict(a) => eval::run_predict(&a),
        Command::ImportMult(a) => model_io::run_import(&a),
        Command::Forward(a) => model_io::run_forward(&a),
        Command::Synth(args) => synth::run(&args),
        Command::Inspect(args) => inspect::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Doctor(args) => doctor::run(&args),
        Command::ImportCsd(args) => import_csd::run(&args),
        Command::Ablate(a) => ablate::run(&a),
        Command::Analyze(a) => analyze::run(&a),
        Command::Sweep(a) => sweep::run(&a),
        Command::Grid(a) => grid::run(&a),
        Command::RunTask(a) => plan::run_task(&a),
        Command::Attention(a) => attention::run(&a),
        Command::Report(a) => report::run(&a),
        Command::Bench(args) => bench::run(&args),
    }
}
