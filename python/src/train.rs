//! `mica.train`: one run per seed into a run directory, exactly as `mica train` does it
//! (the options are the CLI's flags, parsed by the CLI's own parser), with progress
//! events for Python and a clean stop on Ctrl-C.

use crate::errors::{py_error, to_py, Kind};
use crate::runner;
use clap::Parser;
use mica::cli::common::{defaults_for, shapes, ConfigArgs, DataArgs};
use mica::config::Config;
use mica::data::Dataset;
use mica::eval::{aggregate, Metrics};
use mica::train::trainer::{train_with, EpochLog, Progress, RunResult, Stopped, TrainOptions};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// The `mica train` options that configure a run (data choice and config).
#[derive(Parser, Debug)]
#[command(name = "mica.train", no_binary_name = true, disable_help_flag = true)]
struct Options {
    #[command(flatten)]
    data: DataArgs,
    #[command(flatten)]
    cfg: ConfigArgs,
}

/// Where the data of a run comes from.
enum Source {
    /// A built-in dataset or a file, as the CLI's `--dataset` / `--data` give it.
    Cli,
    /// Arrays from Python.
    Arrays(Dataset),
}

/// The finished runs (seed, directory, result), or the error and the exception class
/// for it.
type Runs = Result<Vec<(u64, PathBuf, RunResult)>, (Kind, anyhow::Error)>;

/// An event sent from the training thread.
enum Event {
    Progress(u64, Progress),
}

fn log_dict<'py>(py: Python<'py>, h: &EpochLog) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("epoch", h.epoch)?;
    d.set_item("train_loss", h.train_loss)?;
    d.set_item("train_task", h.train_task)?;
    d.set_item("train_lm", h.train_lm)?;
    d.set_item("train_le", h.train_le)?;
    d.set_item("valid_loss", h.valid_loss)?;
    d.set_item("lr", h.lr)?;
    d.set_item("seconds", h.seconds)?;
    Ok(d)
}

fn json_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| py_error(Kind::Mica, format!("{e}")))?;
    py.import("json")?.call_method1("loads", (text,))
}

fn event_dict<'py>(py: Python<'py>, seed: u64, p: &Progress) -> PyResult<Bound<'py, PyDict>> {
    let d = match p {
        Progress::Batch {
            epoch,
            epochs,
            samples,
            samples_total,
            loss,
        } => {
            let d = PyDict::new(py);
            d.set_item("kind", "batch")?;
            d.set_item("epoch", epoch)?;
            d.set_item("epochs", epochs)?;
            d.set_item("samples", samples)?;
            d.set_item("samples_total", samples_total)?;
            d.set_item("loss", loss)?;
            d
        }
        Progress::Epoch { epochs, log } => {
            let d = log_dict(py, log)?;
            d.set_item("kind", "epoch")?;
            d.set_item("epochs", epochs)?;
            d
        }
    };
    d.set_item("seed", seed)?;
    Ok(d)
}

/// One finished run as a dict.
fn run_dict<'py>(
    py: Python<'py>,
    seed: u64,
    out: &Path,
    r: &RunResult,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("seed", seed)?;
    d.set_item("out", out.display().to_string())?;
    d.set_item("test", json_to_py(py, &r.test.to_json())?)?;
    d.set_item("valid", json_to_py(py, &r.valid.to_json())?)?;
    d.set_item("best_epoch", r.best_epoch)?;
    d.set_item("best_valid_loss", r.best_valid_loss)?;
    let h = PyList::empty(py);
    for e in &r.history {
        h.append(log_dict(py, e)?)?;
    }
    d.set_item("history", h)?;
    Ok(d)
}

/// Trains one run per seed (or continues the run in `resume`) and returns
/// `{"runs": [...], "test": {metric: {mean, std, std_sample, n}}, "out": dir}`.
///
/// `data` is `None` (the CLI's `--data` / `--dataset` in `argv` say which data) or a dict
/// of splits of numpy arrays; `argv` holds `mica train`'s flags; `callback(event)` is
/// called on this thread after every batch and epoch.
#[pyfunction]
#[pyo3(signature = (data, argv, seeds, out, resume, callback))]
pub fn train<'py>(
    py: Python<'py>,
    data: Option<Bound<'py, PyDict>>,
    argv: Vec<String>,
    seeds: Vec<u64>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    callback: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = Options::try_parse_from(&argv).map_err(|e| {
        let text = e.render().to_string();
        let text = text.split("\nUsage:").next().unwrap_or(&text).trim();
        let text = text.strip_prefix("error: ").unwrap_or(text);
        py_error(
            Kind::Config,
            format!("{text} (the options are `mica train`'s flags: epochs=2 is --epochs 2)"),
        )
    })?;
    let source = match &data {
        Some(d) => Source::Arrays(crate::arrays::dataset_from_dict(d)?),
        None => Source::Cli,
    };
    if seeds.is_empty() {
        return Err(py_error(
            Kind::Config,
            "seeds: give at least one seed".into(),
        ));
    }
    for (i, s) in seeds.iter().enumerate() {
        if seeds[..i].contains(s) {
            return Err(py_error(
                Kind::Config,
                format!(
                    "seeds: seed {s} appears twice (each seed is one run): list distinct seeds"
                ),
            ));
        }
    }
    if resume.is_some() && seeds.len() > 1 {
        return Err(py_error(Kind::Config, "resume: a run has one seed".into()));
    }
    let variant = opts.cfg.variant.unwrap_or(mica::config::Variant::Mica);
    let base = match (&resume, out) {
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o,
        (None, None) => {
            let name = match (&source, &opts.data.data) {
                (Source::Arrays(_), _) => "arrays".to_string(),
                (Source::Cli, Some(p)) => p
                    .file_stem()
                    .map(|s| s.to_string_lossy().to_string())
                    .unwrap_or_else(|| "data".into()),
                (Source::Cli, None) => opts.data.dataset.clone(),
            };
            PathBuf::from("runs").join(format!(
                "{name}-{}-{}",
                variant.name(),
                mica::cli::train::timestamp()
            ))
        }
    };
    let dirs: Vec<PathBuf> = if seeds.len() == 1 {
        vec![base.clone()]
    } else {
        seeds
            .iter()
            .map(|s| base.join(format!("seed-{s}")))
            .collect()
    };
    let data_source = match &source {
        Source::Arrays(_) => "python:arrays".to_string(),
        Source::Cli => opts.data.source(),
    };
    let cb = callback;
    let outcome = runner::run(
        py,
        |r: &runner::Reporter<'_, Event>| -> Runs {
            let config = |e: anyhow::Error| (Kind::Config, e);
            if resume.is_none() {
                for d in &dirs {
                    mica::train::rundir::ensure_fresh(d).map_err(config)?;
                }
            }
            let owned;
            let ds: &Dataset = match &source {
                Source::Arrays(ds) => ds,
                Source::Cli => {
                    owned = load_cli_data(&opts.data).map_err(|e| (Kind::Data, e))?;
                    &owned
                }
            };
            let mut results = Vec::new();
            for (&seed, dir) in seeds.iter().zip(&dirs) {
                let cfg = match &resume {
                    Some(dir) => resumed_config(dir, &opts.cfg).map_err(config)?,
                    None => build_config(&opts, &source, ds, seed).map_err(config)?,
                };
                // A resumed run keeps its own seed.
                let seed = cfg.train.seed;
                mica::train::trainer::check_dataset(&cfg, ds).map_err(|e| (Kind::Data, e))?;
                let topts = TrainOptions {
                    out: dir.clone(),
                    resume: resume.is_some(),
                    stop_after_epochs: None,
                    verbose: false,
                    data_source: Some(data_source.clone()),
                };
                let mut hook = |p: &Progress| {
                    if r.report(Event::Progress(seed, p.clone())) {
                        ControlFlow::Continue(())
                    } else {
                        ControlFlow::Break(())
                    }
                };
                let res =
                    train_with(&cfg, ds, &topts, &mut hook).map_err(|e| (Kind::Training, e))?;
                results.push((seed, dir.clone(), res));
            }
            Ok(results)
        },
        |py, Event::Progress(seed, p)| match &cb {
            Some(f) => f.call1((event_dict(py, seed, &p)?,)).map(|_| ()),
            None => Ok(()),
        },
    );
    let result = outcome.result?;
    let runs = match (result, outcome.interrupt) {
        (Ok(runs), None) => runs,
        (Err((_, e)), Some(interrupt)) => {
            // Stopped on request: the exception that asked for it, with where the run stands.
            if let Some(s) = e.downcast_ref::<Stopped>() {
                let note = format!("mica: {s}");
                let _ = interrupt.value(py).call_method1("add_note", (note,));
            }
            return Err(interrupt);
        }
        (Ok(_), Some(interrupt)) => return Err(interrupt),
        (Err((kind, e)), None) => return Err(to_py(e, kind)),
    };
    let out = PyDict::new(py);
    let list = PyList::empty(py);
    let mut tests: Vec<Metrics> = Vec::new();
    for (seed, dir, r) in &runs {
        list.append(run_dict(py, *seed, dir, r)?)?;
        tests.push(r.test);
    }
    let agg = aggregate(&tests).to_json();
    if runs.len() > 1 {
        let json = serde_json::json!({ "seeds": seeds, "test": agg });
        let text = serde_json::to_string_pretty(&json)
            .map_err(|e| py_error(Kind::Mica, format!("{e}")))?;
        mica::durable::write_atomic(&base.join("summary.json"), text.as_bytes())
            .map_err(|e| to_py(e, Kind::Mica))?;
    }
    out.set_item("runs", list)?;
    out.set_item("test", json_to_py(py, &agg)?)?;
    out.set_item("out", base.display().to_string())?;
    Ok(out)
}

/// Loads `--data` (keeping the reader's error type) or the built-in `--dataset`.
fn load_cli_data(d: &DataArgs) -> anyhow::Result<Dataset> {
    match &d.data {
        Some(p) => {
            let opts = mica::data::LoadOptions {
                drop_nonfinite_labels: d.drop_nonfinite_labels,
            };
            let (ds, dropped) = mica::data::load_any_with(p, &opts)?;
            for x in dropped {
                eprintln!("note: {}: {}", p.display(), x.note());
            }
            Ok(ds)
        }
        None => mica::data::source::load_dataset(None, &d.dataset, d.data_seed),
    }
}

/// The run's config, as `mica train` builds it.
fn build_config(
    opts: &Options,
    source: &Source,
    ds: &Dataset,
    seed: u64,
) -> anyhow::Result<Config> {
    match source {
        Source::Cli => opts.cfg.build(&opts.data, ds, seed),
        Source::Arrays(_) => {
            let (preset0, task0) = defaults_for(&opts.data.dataset, true, ds);
            let (dims, lens) = shapes(ds)?;
            opts.cfg.build_for(preset0, task0, dims, lens, seed)
        }
    }
}

/// A resumed run's saved config; `epochs` may raise its epoch count (saved, as
/// `mica train --resume --epochs` does).
fn resumed_config(dir: &Path, c: &ConfigArgs) -> anyhow::Result<Config> {
    anyhow::ensure!(
        dir.join("config.json").is_file(),
        "resume {}: no run to continue there (no config.json)",
        dir.display()
    );
    let mut cfg = Config::from_file(&dir.join("config.json"))?;
    if let Some(n) = c.epochs.filter(|&n| n != cfg.train.epochs) {
        let done = mica::train::trainer::epochs_done(dir)?;
        anyhow::ensure!(
            n >= done,
            "resume {}: epochs={n}, but the run has already trained {done} epochs",
            dir.display()
        );
        cfg.train.epochs = n;
        mica::durable::write_atomic(
            &dir.join("config.json"),
            serde_json::to_string_pretty(&cfg)?.as_bytes(),
        )?;
    }
    Ok(cfg)
}
