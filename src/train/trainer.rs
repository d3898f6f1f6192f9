//! The training loop (spec/training.md): Adam, global-norm clipping, ReduceLROnPlateau on
//! the validation loss, best weights on validation, test only at the end; a run directory
//! with config, per-epoch CSV log, atomic best/last checkpoints, metrics JSON and a
//! loss-curve PNG; exact `--resume`.

use super::checkpoint;
use super::loss::{emotion_ce, l1_loss};
use super::optim::{clip_grad_norm, Adam, AdamConfig};
use super::rundir::{self, DataRef, RunInfo};
use super::schedule::ReduceLrOnPlateau;
use crate::align::alignment_losses;
use crate::config::{Config, Task};
use crate::data::batch::{chunks, labels_f64, make_batch, Batch};
use crate::data::{Dataset, Labels, Split};
use crate::eval::{evaluate, Metrics};
use crate::kernels::rng::mix64;
use crate::model::config::{Arch, Positions};
use crate::model::ctx::Ctx;
use crate::model::io::ForwardOpts;
use crate::model::params::{Initializer, ParamStore};
use crate::model::Model;
use anyhow::{bail, ensure, Context, Result};
use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// How a run is carried out (not part of the model config).
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Run directory.
    pub out: PathBuf,
    /// Continue the run in `out` from its last checkpoint.
    pub resume: bool,
    /// Stop (as if killed) after this many epochs in this process; for resume tests.
    pub stop_after_epochs: Option<usize>,
    /// Show progress bars and per-epoch lines on stderr.
    pub verbose: bool,
    /// Where the data came from (recorded in `run.json`; on resume the data's hash must
    /// match the recorded one). `None`: described as `unnamed`.
    pub data_source: Option<String>,
}

/// Where a run stands: reported to the hook of [`train_with`] after every training batch
/// and after every finished epoch (its checkpoint written).
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A training batch has been applied.
    Batch {
        /// 1-based epoch.
        epoch: usize,
        /// Epochs of the run.
        epochs: usize,
        /// Training samples of this epoch seen so far.
        samples: usize,
        /// Training samples per epoch.
        samples_total: usize,
        /// Mean total training loss of this epoch so far.
        loss: f64,
    },
    /// An epoch has finished and the `last` checkpoint holds it.
    Epoch {
        /// Epochs of the run.
        epochs: usize,
        /// The epoch's log line.
        log: EpochLog,
    },
}

/// The error of a run that the hook of [`train_with`] stopped: the run directory keeps
/// its last checkpoint, and `mica train --resume` continues it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Stopped {
    /// Epochs finished (and saved in the `last` checkpoint).
    pub epochs_done: usize,
    /// The run directory.
    pub out: PathBuf,
    /// What happened and how to continue.
    pub message: String,
}

/// One line of the per-epoch log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean total training loss.
    pub train_loss: f64,
    /// Mean task loss on train.
    pub train_task: f64,
    /// Mean L_m on train (0 when off).
    pub train_lm: f64,
    /// Mean L_e on train (0 when off).
    pub train_le: f64,
    /// Validation task loss.
    pub valid_loss: f64,
    /// Learning rate used in this epoch.
    pub lr: f64,
    /// Wall seconds of the epoch.
    pub seconds: f64,
}

/// Loop state saved with the last checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunState {
    epochs_done: usize,
    global_step: u64,
    lr: f64,
    scheduler: ReduceLrOnPlateau,
    best_valid: Option<f64>,
    best_epoch: usize,
    adam_steps: std::collections::BTreeMap<String, u64>,
    history: Vec<EpochLog>,
}

/// What a finished run reports.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Test metrics of the best-on-validation weights.
    pub test: Metrics,
    /// Validation metrics of the same weights.
    pub valid: Metrics,
    /// Epoch (1-based) of the best validation loss.
    pub best_epoch: usize,
    /// Best validation loss.
    pub best_valid_loss: f64,
    /// Per-epoch log.
    pub history: Vec<EpochLog>,
}

/// Losses of one batch.
#[derive(Debug, Clone)]
pub struct StepLosses {
    /// `L_p + alpha L_m + beta L_e` (with gradient).
    pub total: Tensor,
    /// Task loss value.
    pub task: f64,
    /// L_m value (0 when off).
    pub lm: f64,
    /// L_e value (0 when off).
    pub le: f64,
}

/// The task loss of `output` against batch labels.
pub fn task_loss(task: Task, output: &Tensor, labels: &Tensor) -> Result<Tensor> {
    match task {
        Task::Iemocap => emotion_ce(output, labels),
        _ => l1_loss(output, labels),
    }
}

/// Forward + all loss terms of one batch.
pub fn step_losses(
    model: &Model,
    cfg: &Config,
    batch: &Batch,
    ctx: &Ctx,
    mmd_seed: u64,
) -> Result<StepLosses> {
    let a = &cfg.align;
    let opts = ForwardOpts {
        trace: a.alpha > 0.0 || a.beta > 0.0,
        probs: false,
        intermediates: false,
    };
    let out = model.forward(ctx, &batch.inputs, opts)?;
    let lp = task_loss(cfg.task, &out.output, &batch.labels)?;
    let mut total = lp.clone();
    // The classic baselines' own objectives (CTC, translation): crate::model::baselines.
    if let Some(aux) = out.intermediates.get(crate::model::baselines::AUX_LOSS) {
        total = (total + aux)?;
    }
    let al = alignment_losses(&out, a, mmd_seed, false)?;
    let mut lm_v = 0.0;
    let mut le_v = 0.0;
    if let Some(lm) = &al.lm {
        lm_v = scalar(lm)?;
        total = (total + (lm * a.alpha)?)?;
    }
    if let Some(le) = &al.le {
        le_v = scalar(le)?;
        total = (total + (le * a.beta)?)?;
    }
    Ok(StepLosses {
        task: scalar(&lp)?,
        total,
        lm: lm_v,
        le: le_v,
    })
}

fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}

/// Checks that the data fits the config (dims, lengths, label kind); errors are one line.
pub fn check_dataset(cfg: &Config, ds: &Dataset) -> Result<()> {
    for name in ["train", "valid", "test"] {
        let split = ds
            .splits
            .get(name)
            .with_context(|| format!("the dataset has no `{name}` split"))?;
        check_split(cfg, split, name)?;
    }
    Ok(())
}

/// Checks one split against the config.
pub fn check_split(cfg: &Config, split: &Split, name: &str) -> Result<()> {
    let m = &cfg.model;
    ensure!(!split.is_empty(), "split `{name}` is empty");
    for (k, (mo, want_d, want_t)) in [
        (&split.text, m.orig_d_l, m.l_len),
        (&split.audio, m.orig_d_a, m.a_len),
        (&split.vision, m.orig_d_v, m.v_len),
    ]
    .into_iter()
    .enumerate()
    {
        let mname = crate::data::MODALITIES[k];
        ensure!(
            mo.d == want_d,
            "split `{name}`: {mname} has {} features, the model expects {want_d}",
            mo.d
        );
        ensure!(
            mo.t == want_t,
            "split `{name}`: {mname} has length {}, the model expects {want_t}",
            mo.t
        );
    }
    check_element_times(cfg, split, name)?;
    match (&split.labels, cfg.task) {
        (Labels::Emotion(_), Task::Iemocap) | (Labels::Sentiment(_), Task::Mosi | Task::Mosei) => Ok(()),
        (Labels::Emotion(_), t) => bail!("split `{name}` has IEMOCAP emotion labels (N, 4) but the task is `{t}`: use --task iemocap"),
        (Labels::Sentiment(_), _) => bail!("split `{name}` has sentiment labels (N, 1) but the task is `iemocap`: use --task mosi or mosei"),
    }
}

/// Refuses, before anything is trained or written, attention options that need element
/// times (`time_bias`, `positions = time`) on a split that has none (a MulT/MMSA pickle),
/// naming the option and how to switch it off. The recurrent baselines ignore both.
fn check_element_times(cfg: &Config, split: &Split, name: &str) -> Result<()> {
    let m = &cfg.model;
    if split.intervals.is_some() || !matches!(m.arch, Arch::Mult | Arch::Mica) {
        return Ok(());
    }
    ensure!(
        m.time_bias == 0.0,
        "split `{name}` has no element times (data without element intervals, e.g. a MulT/MMSA \
         pickle), and model option `time_bias` = {} needs them (the preset `synth-small` sets \
         0.1): add `--set model.time_bias=0` or use data with times (the built-in benchmark, \
         `mica import-csd`)",
        m.time_bias
    );
    ensure!(
        m.positions != Positions::Time,
        "split `{name}` has no element times (data without element intervals, e.g. a MulT/MMSA \
         pickle), and `--positions time` needs them: use `--positions index`"
    );
    Ok(())
}

/// Eval-mode predictions of a split (flattened `[N * output_dim]`) and its mean task loss.
pub fn predict_split(
    model: &Model,
    cfg: &Config,
    split: &Split,
    device: &Device,
) -> Result<(Vec<f64>, f64)> {
    let order: Vec<usize> = (0..split.len()).collect();
    let ctx = Ctx::eval();
    let mut preds = Vec::with_capacity(split.len() * cfg.model.output_dim);
    let mut loss_sum = 0.0;
    for idx in chunks(&order, cfg.train.batch_size) {
        let batch = make_batch(split, &idx, device)?;
        let out = model.forward(&ctx, &batch.inputs, ForwardOpts::default())?;
        loss_sum += scalar(&task_loss(cfg.task, &out.output, &batch.labels)?)? * idx.len() as f64;
        let v: Vec<f32> = out.output.flatten_all()?.to_vec1()?;
        preds.extend(v.into_iter().map(|x| x as f64));
    }
    Ok((preds, loss_sum / split.len() as f64))
}

/// Metrics of a split's predictions.
pub fn split_metrics(task: Task, split: &Split, preds: &[f64]) -> Result<Metrics> {
    Ok(evaluate(task, preds, &labels_f64(&split.labels))?)
}

fn write_log(path: &Path, history: &[EpochLog]) -> Result<()> {
    let mut s =
        String::from("epoch,train_loss,train_task,train_lm,train_le,valid_loss,lr,seconds\n");
    for h in history {
        s.push_str(&format!(
            "{},{},{},{},{},{},{},{:.3}\n",
            h.epoch,
            h.train_loss,
            h.train_task,
            h.train_lm,
            h.train_le,
            h.valid_loss,
            h.lr,
            h.seconds
        ));
    }
    atomic_write(path, s.as_bytes())
}

/// Writes a file atomically (see [`crate::durable::write_atomic`]).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::durable::write_atomic(path, bytes)
}

fn plot_losses(path: &Path, history: &[EpochLog]) -> Result<()> {
    let pts = |f: fn(&EpochLog) -> f64| {
        history
            .iter()
            .map(|h| (h.epoch as f64, f(h)))
            .collect::<Vec<_>>()
    };
    let mut series = vec![
        ("train task loss", pts(|h| h.train_task)),
        ("valid loss", pts(|h| h.valid_loss)),
    ];
    if history.iter().any(|h| h.train_lm != 0.0) {
        series.push(("train L_m", pts(|h| h.train_lm)));
    }
    if history.iter().any(|h| h.train_le != 0.0) {
        series.push(("train L_e", pts(|h| h.train_le)));
    }
    crate::plots::line_plot(path, "Loss curves", "epoch", "loss", &series)
}

/// Trains one seed (`cfg.train.seed`) into `opts.out` and evaluates the best weights on test.
///
/// Every state a kill can leave in `opts.out` is either resumable (`opts.resume`) or, when
/// no run had started yet, restartable: a run directory holding its `config.json` but no
/// `last` checkpoint (killed in epoch 1) is resumed from epoch 1.
pub fn train(cfg: &Config, ds: &Dataset, opts: &TrainOptions) -> Result<RunResult> {
    train_with(cfg, ds, opts, &mut |_| ControlFlow::Continue(()))
}

/// [`train`], calling `hook` after every training batch and every finished epoch; when
/// it returns `Break` the run stops there (the batches of an unfinished epoch are
/// dropped, the `last` checkpoint of the epoch before stays) with a [`Stopped`] error.
pub fn train_with(
    cfg: &Config,
    ds: &Dataset,
    opts: &TrainOptions,
    hook: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<RunResult> {
    cfg.validate()?;
    ensure!(
        cfg.train.epochs >= 1,
        "--epochs {}: nothing to train (use 1 or more)",
        cfg.train.epochs
    );
    check_dataset(cfg, ds)?;
    let device = Device::Cpu;
    let out = &opts.out;
    let (train_s, valid_s) = (&ds.splits["train"], &ds.splits["valid"]);
    crate::model::memory::ensure_fits(&cfg.model, Some(cfg.train.batch_size.min(train_s.len())))?;
    let data = DataRef {
        source: opts.data_source.clone().unwrap_or_else(|| "unnamed".into()),
        sha256: crate::data::fingerprint::fingerprint(ds),
    };
    start_or_resume_dir(cfg, opts, data)?;

    let seed = cfg.train.seed;
    let mut init = Initializer::new(seed, &device);
    let model = Model::new(&mut init, &cfg.model)?;
    let store = init.into_store();
    let mut adam = Adam::new(AdamConfig {
        lr: cfg.train.lr,
        ..Default::default()
    });
    let mut state = RunState {
        epochs_done: 0,
        global_step: 0,
        lr: cfg.train.lr,
        scheduler: ReduceLrOnPlateau::new(cfg.train.lr_factor, cfg.train.when),
        best_valid: None,
        best_epoch: 0,
        adam_steps: Default::default(),
        history: Vec::new(),
    };
    let last_dir = out.join("last");
    let best_dir = out.join("best");
    if opts.resume {
        resume_from_last(cfg, opts, &store, &mut adam, &mut state, &device)?;
    }

    let e = EpochCtx {
        cfg,
        opts,
        model: &model,
        store: &store,
        train_s,
        valid_s,
        device: &device,
        last_dir: &last_dir,
    };
    let mut ran_here = 0;
    while state.epochs_done < cfg.train.epochs {
        if opts.stop_after_epochs.is_some_and(|k| ran_here >= k) {
            bail!("stopped after {ran_here} epoch(s) as requested (--stop-after-epochs); continue with --resume {}", out.display());
        }
        let epoch = state.epochs_done + 1;
        let log = run_epoch(&e, &mut adam, &mut state, epoch, hook)?;
        let valid_loss = log.valid_loss;
        if opts.verbose {
            eprintln!(
                "epoch {epoch:>3}/{} | train {:.4} (task {:.4}, L_m {:.4}, L_e {:.4}) | valid {:.4} | lr {:.1e} | {:.1}s",
                cfg.train.epochs, log.train_loss, log.train_task, log.train_lm, log.train_le, valid_loss, state.lr, log.seconds
            );
        }
        let epoch_log = log.clone();
        state.history.push(log);
        state.lr = state.scheduler.step(valid_loss, state.lr);
        if state.best_valid.is_none_or(|b| valid_loss < b) {
            state.best_valid = Some(valid_loss);
            state.best_epoch = epoch;
            checkpoint::save(&best_dir, cfg, &store, &|_| Ok(()))?;
        }
        state.epochs_done = epoch;
        save_last(&last_dir, cfg, &store, &adam, &state)?;
        write_log(&out.join("log.csv"), &state.history)?;
        ran_here += 1;
        let p = Progress::Epoch {
            epochs: cfg.train.epochs,
            log: epoch_log,
        };
        if hook(&p).is_break() && epoch < cfg.train.epochs {
            return Err(stopped(out, &last_dir, epoch, cfg.train.epochs).into());
        }
    }
    finish(cfg, ds, opts, &state, &device)
}

/// The [`Stopped`] error of a run stopped after `done` of `epochs` epochs.
fn stopped(out: &Path, last_dir: &Path, done: usize, epochs: usize) -> Stopped {
    let kept = match checkpoint::existing(last_dir) {
        Some(d) => format!(
            "the last checkpoint (after epoch {done}) is in {}; continue with `mica train --resume {}`",
            d.display(),
            out.display()
        ),
        None => format!(
            "no epoch had finished, so there is no checkpoint yet; `mica train --resume {}` starts it from epoch 1",
            out.display()
        ),
    };
    Stopped {
        epochs_done: done,
        out: out.to_path_buf(),
        message: format!("training stopped after epoch {done} of {epochs}: {kept}"),
    }
}

/// A fresh run directory (config and data written first), or, with `--resume`, checks that
/// `out` holds a run of this data.
fn start_or_resume_dir(cfg: &Config, opts: &TrainOptions, data: DataRef) -> Result<()> {
    let out = &opts.out;
    if opts.resume {
        ensure!(
            rundir::dir_state(out)? == rundir::DirState::Run,
            "--resume {}: no run to continue there (no config.json; a run killed before it wrote its config): start it again with the same options and --out {}",
            out.display(),
            out.display()
        );
        match rundir::read_info(out)? {
            Some(info) if info.data.sha256 != data.sha256 => bail!(
                "--resume {}: the run was trained on {} (sha256 {}), but the data given is {} (sha256 {}): resume with the run's data",
                out.display(),
                info.data.describe(),
                &info.data.sha256[..12.min(info.data.sha256.len())],
                data.describe(),
                &data.sha256[..12]
            ),
            Some(_) => {}
            None => rundir::write_info(out, &RunInfo::new(data.clone()))?,
        }
    } else {
        rundir::ensure_fresh(out)?;
        std::fs::create_dir_all(out)
            .with_context(|| format!("creating run directory {}", out.display()))?;
        crate::durable::remove_leftovers(out)?;
        // run.json first: a directory with a config always knows its data.
        rundir::write_info(out, &RunInfo::new(data))?;
        atomic_write(
            &out.join("config.json"),
            serde_json::to_string_pretty(cfg)?.as_bytes(),
        )?;
    }
    Ok(())
}

/// Restores the weights, optimiser and schedule from the last checkpoint of the run in
/// `opts.out`, if an epoch had finished.
fn resume_from_last(
    cfg: &Config,
    opts: &TrainOptions,
    store: &ParamStore,
    adam: &mut Adam,
    state: &mut RunState,
    device: &Device,
) -> Result<()> {
    let out = &opts.out;
    let last_dir = out.join("last");
    let best_dir = out.join("best");
    crate::durable::remove_leftovers(out)?;
    checkpoint::tidy(&last_dir)?;
    checkpoint::tidy(&best_dir)?;
    match checkpoint::existing(&last_dir) {
        Some(dir) => {
            restore(&dir, cfg, store, adam, state, device)?;
            if opts.verbose {
                eprintln!(
                    "resuming {} after epoch {}",
                    out.display(),
                    state.epochs_done
                );
            }
        }
        None => {
            if opts.verbose {
                eprintln!(
                    "{}: no epoch had finished (no last checkpoint): starting over from epoch 1",
                    out.display()
                );
            }
        }
    }
    Ok(())
}

/// Where the last good weights are, for the message of a diverged run.
fn kept_checkpoint(last_dir: &Path, epochs_done: usize) -> String {
    match checkpoint::existing(last_dir) {
        Some(d) => format!(
            "the last good checkpoint (after epoch {}) is in {}",
            epochs_done,
            d.display()
        ),
        None => "no epoch had finished, so there is no checkpoint yet".to_string(),
    }
}

/// What every epoch of a run reads.
struct EpochCtx<'a> {
    cfg: &'a Config,
    opts: &'a TrainOptions,
    model: &'a Model,
    store: &'a ParamStore,
    train_s: &'a Split,
    valid_s: &'a Split,
    device: &'a Device,
    last_dir: &'a Path,
}

/// Epoch `epoch`: one pass over the shuffled training batches (forward, backward, clip,
/// Adam), then the validation loss; an error when either loss is not finite.
fn run_epoch(
    e: &EpochCtx,
    adam: &mut Adam,
    state: &mut RunState,
    epoch: usize,
    hook: &mut dyn FnMut(&Progress) -> ControlFlow<()>,
) -> Result<EpochLog> {
    let seed = e.cfg.train.seed;
    let t0 = Instant::now();
    adam.cfg.lr = state.lr;
    let mut order: Vec<usize> = (0..e.train_s.len()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix64(
        seed ^ mix64(epoch as u64),
    )));
    let batches = chunks(&order, e.cfg.train.batch_size);
    let bar = progress_bar(
        e.opts.verbose,
        e.train_s.len() as u64,
        epoch,
        e.cfg.train.epochs,
    );
    let (mut tot, mut task, mut lm, mut le, mut seen) = (0.0, 0.0, 0.0, 0.0, 0usize);
    for idx in &batches {
        state.global_step += 1;
        let step_seed = mix64(seed ^ mix64(0xD0 ^ state.global_step));
        let batch = make_batch(e.train_s, idx, e.device)?;
        let ctx = Ctx::train(step_seed);
        let losses =
            step_losses(e.model, e.cfg, &batch, &ctx, mix64(step_seed)).with_context(|| {
                format!(
                    "epoch {epoch}, step {} (training samples {})",
                    state.global_step,
                    sample_list(idx, e.train_s)
                )
            })?;
        let total_v = scalar(&losses.total)?;
        if !total_v.is_finite() {
            let kept = kept_checkpoint(e.last_dir, state.epochs_done);
            bail!(
                "the training loss became non-finite ({total_v}) at epoch {epoch}, step {} (task {}, L_m {}, L_e {}); {kept}. Try a lower --lr or check the data (mica inspect)",
                state.global_step, losses.task, losses.lm, losses.le
            );
        }
        let mut grads = losses.total.backward()?;
        clip_grad_norm(e.store, &mut grads, e.cfg.train.clip)?;
        adam.step(e.store, &grads)?;
        let n = idx.len() as f64;
        tot += total_v * n;
        task += losses.task * n;
        lm += losses.lm * n;
        le += losses.le * n;
        seen += idx.len();
        if let Some(b) = &bar {
            b.inc(idx.len() as u64);
            let rate = seen as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!(
                "loss {:.4} | {rate:.0} samples/s",
                tot / seen as f64
            ));
        }
        let p = Progress::Batch {
            epoch,
            epochs: e.cfg.train.epochs,
            samples: seen,
            samples_total: e.train_s.len(),
            loss: tot / seen as f64,
        };
        if hook(&p).is_break() {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            let out = &e.opts.out;
            let done = state.epochs_done;
            return Err(stopped(out, e.last_dir, done, e.cfg.train.epochs).into());
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let (_, valid_loss) = predict_split(e.model, e.cfg, e.valid_s, e.device)?;
    if !valid_loss.is_finite() {
        let kept = kept_checkpoint(e.last_dir, state.epochs_done);
        bail!("the validation loss became non-finite ({valid_loss}) after epoch {epoch}: the weights diverged; {kept}. Try a lower --lr");
    }
    let n = seen as f64;
    Ok(EpochLog {
        epoch,
        train_loss: tot / n,
        train_task: task / n,
        train_lm: lm / n,
        train_le: le / n,
        valid_loss,
        lr: state.lr,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The ids (or indices) of a batch's samples, for error messages: at most 8 of them.
fn sample_list(idx: &[usize], split: &Split) -> String {
    let name = |i: usize| {
        split
            .ids
            .as_ref()
            .map_or_else(|| i.to_string(), |v| v[i].clone())
    };
    let mut s: Vec<String> = idx.iter().take(8).map(|&i| name(i)).collect();
    if idx.len() > 8 {
        s.push(format!("and {} more", idx.len() - 8));
    }
    s.join(", ")
}

/// Restores weights, optimiser and loop state from the `last` checkpoint `dir`.
fn restore(
    dir: &Path,
    cfg: &Config,
    store: &ParamStore,
    adam: &mut Adam,
    state: &mut RunState,
    device: &Device,
) -> Result<()> {
    let manifest = checkpoint::read_manifest(dir)?;
    let mut saved = Config::from_file(&dir.join("config.json"))?;
    // More epochs may be asked for on resume; nothing else may differ.
    saved.train.epochs = cfg.train.epochs;
    ensure!(saved == *cfg, "--resume: the config differs from the run's saved config ({}); resume without other options", dir.join("config.json").display());
    let (_, saved_store, _) = checkpoint::load(dir, device)?;
    store.assign_from(&saved_store.tensors())?;
    if !dir.join("state.json").is_file() {
        bail!("{}: no state.json (a checkpoint of an older mica, killed between its writes): this run cannot be continued; start it again into a new --out", dir.display());
    }
    let text = checkpoint::read_verified(dir, manifest.as_ref(), "state.json")?;
    *state = serde_json::from_slice(&text)
        .with_context(|| format!("{}: bad state.json", dir.display()))?;
    checkpoint::adam_from_file(adam, dir, manifest.as_ref(), &state.adam_steps)
}

/// Saves the `last` checkpoint: weights, config, optimiser and loop state as one unit.
fn save_last(
    dir: &Path,
    cfg: &Config,
    store: &ParamStore,
    adam: &Adam,
    state: &RunState,
) -> Result<()> {
    checkpoint::save(dir, cfg, store, &|tmp| {
        let mut st = state.clone();
        st.adam_steps = checkpoint::adam_to_file(adam, store, &tmp.join("optimizer.safetensors"))?;
        std::fs::write(tmp.join("state.json"), serde_json::to_string_pretty(&st)?)
            .with_context(|| format!("writing {}", tmp.join("state.json").display()))?;
        Ok(())
    })
}

fn finish(
    cfg: &Config,
    ds: &Dataset,
    opts: &TrainOptions,
    state: &RunState,
    device: &Device,
) -> Result<RunResult> {
    let out = &opts.out;
    // Also here: a kill between the last checkpoint and the log leaves the log behind.
    write_log(&out.join("log.csv"), &state.history)?;
    let (_, _, best) = checkpoint::load(&out.join("best"), device)?;
    let (valid_preds, _) = predict_split(&best, cfg, &ds.splits["valid"], device)?;
    let (test_preds, _) = predict_split(&best, cfg, &ds.splits["test"], device)?;
    let valid = split_metrics(cfg.task, &ds.splits["valid"], &valid_preds)?;
    let test = split_metrics(cfg.task, &ds.splits["test"], &test_preds)?;
    let json = serde_json::json!({
        "variant": cfg.variant.name(),
        "task": cfg.task.name(),
        "seed": cfg.train.seed,
        "best_epoch": state.best_epoch,
        "best_valid_loss": state.best_valid,
        "test": test.to_json(),
        "valid": valid.to_json(),
    });
    // The plot goes before metrics.json, which marks the run finished; it is drawn
    // beside its name and renamed into place (the plotter picks the format by extension).
    let png_tmp = out.join(format!(".loss.tmp-{}.png", std::process::id()));
    let drawn = plot_losses(&png_tmp, &state.history)
        .and_then(|()| crate::durable::commit_tmp(&png_tmp, &out.join("loss.png")));
    if let Err(e) = drawn {
        let _ = std::fs::remove_file(&png_tmp);
        eprintln!(
            "warning: could not draw {}: {e:#}",
            out.join("loss.png").display()
        );
    }
    atomic_write(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(&json)?.as_bytes(),
    )?;
    Ok(RunResult {
        test,
        valid,
        best_epoch: state.best_epoch,
        best_valid_loss: state.best_valid.unwrap_or(f64::NAN),
        history: state.history.clone(),
    })
}

fn progress_bar(
    verbose: bool,
    len: u64,
    epoch: usize,
    epochs: usize,
) -> Option<indicatif::ProgressBar> {
    if !verbose {
        return None;
    }
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{epoch}/{epochs}"));
    Some(bar)
}

/// Epochs the run in `out` has finished (from its last checkpoint; 0 without one).
pub fn epochs_done(out: &Path) -> Result<usize> {
    let Some(dir) = checkpoint::existing(&out.join("last")) else {
        return Ok(0);
    };
    let manifest = checkpoint::read_manifest(&dir)?;
    if !dir.join("state.json").is_file() {
        return Ok(0);
    }
    let bytes = checkpoint::read_verified(&dir, manifest.as_ref(), "state.json")?;
    let state: RunState = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: bad state.json", dir.display()))?;
    Ok(state.epochs_done)
}
