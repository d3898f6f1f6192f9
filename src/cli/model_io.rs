//! `mica import-mult` and `mica forward`: bring official PyTorch MulT weights into mica and
//! run a raw eval-mode forward (also how parity is checked from outside).

use crate::config::{Config, Task, Variant};
use crate::model::ctx::Ctx;
use crate::model::import::{import_official, read_safetensors};
use crate::model::io::{ForwardOpts, Inputs};
use crate::train::checkpoint;
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use std::collections::HashMap;
use std::path::PathBuf;

/// Imports an official MulT `state_dict` (safetensors) into a mica checkpoint directory.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Official `state_dict` saved as safetensors (PyTorch parameter names).
    #[arg(long)]
    pub weights: PathBuf,
    /// JSON with the official hyper-parameters (orig_d_l, ..., partial), or a whole
    /// fixture config.json holding them under "model".
    #[arg(long)]
    pub config: PathBuf,
    /// Checkpoint directory to write (model.safetensors + config.json).
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `mica import-mult`.
pub fn run_import(a: &ImportArgs) -> Result<()> {
    let device = Device::Cpu;
    crate::durable::ensure_not_input(&a.out, "--out", &[a.weights.clone(), a.config.clone()])?;
    let is_ckpt = a.out.join("model.safetensors").is_file() && a.out.join("config.json").is_file();
    anyhow::ensure!(
        is_ckpt || crate::durable::is_empty_dir(&a.out)?,
        "--out {}: exists and is neither empty nor a mica checkpoint: choose another --out (nothing was written)",
        a.out.display()
    );
    let (model_cfg, store, _model) = import_official(&a.weights, &a.config, &device)?;
    let task = if model_cfg.output_dim == 8 {
        Task::Iemocap
    } else {
        Task::Mosi
    };
    let mut cfg = Config {
        variant: Variant::Mult,
        task,
        model: model_cfg,
        align: Default::default(),
        train: Default::default(),
    };
    cfg.apply_variant();
    cfg.validate()?;
    checkpoint::save(&a.out, &cfg, &store, &|_| Ok(()))?;
    eprintln!(
        "imported {} parameters ({} tensors) into {}",
        store.num_scalars(),
        store.vars.len(),
        a.out.display()
    );
    Ok(())
}

/// Eval-mode forward of a checkpoint on raw input tensors.
#[derive(Args, Debug)]
pub struct ForwardArgs {
    /// Checkpoint directory (from `mica train` or `mica import-mult`).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// safetensors with `text`, `audio`, `vision` as [B, T, D] f32.
    #[arg(long)]
    pub inputs: PathBuf,
    /// safetensors to write: `output` [B, output_dim] and `last_hs` [B, C].
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `mica forward`.
pub fn run_forward(a: &ForwardArgs) -> Result<()> {
    let device = Device::Cpu;
    let mut inputs = checkpoint::input_files(&a.checkpoint);
    inputs.push(a.inputs.clone());
    crate::durable::ensure_not_input(&a.out, "--out", &inputs)?;
    let (_cfg, _store, model) = checkpoint::load(&a.checkpoint, &device)?;
    let t = read_safetensors(&a.inputs, &device)?;
    let get = |k: &str| -> Result<Tensor> {
        let x = t.get(k).with_context(|| {
            format!(
                "{}: no tensor `{k}` (need text, audio, vision)",
                a.inputs.display()
            )
        })?;
        Ok(x.to_dtype(candle_core::DType::F32)?)
    };
    let inputs = Inputs {
        text: get("text")?,
        audio: get("audio")?,
        vision: get("vision")?,
        // Optional element times (`text_times`, `audio_times`, `vision_times`, `[B, T]`
        // seconds, NaN for padding) for checkpoints trained with `positions = time`.
        times: match (
            t.get("text_times"),
            t.get("audio_times"),
            t.get("vision_times"),
        ) {
            (Some(l), Some(a), Some(v)) => Some([
                l.to_dtype(candle_core::DType::F32)?,
                a.to_dtype(candle_core::DType::F32)?,
                v.to_dtype(candle_core::DType::F32)?,
            ]),
            _ => None,
        },
    };
    let out = model
        .forward(&Ctx::eval(), &inputs, ForwardOpts::default())
        .with_context(|| format!("forward on {}", a.inputs.display()))?;
    let values: Vec<f32> = out.output.flatten_all()?.to_vec1()?;
    if let Some(k) = values.iter().position(|x| !x.is_finite()) {
        anyhow::bail!(
            "{}: output value {k} is {} (the inputs or the weights hold NaN or infinity); nothing was written",
            a.inputs.display(),
            values[k]
        );
    }
    let map: HashMap<String, Tensor> = [
        ("output".to_string(), out.output),
        ("last_hs".to_string(), out.last_hs),
    ]
    .into_iter()
    .collect();
    let tmp = crate::durable::tmp_sibling(&a.out);
    candle_core::safetensors::save(&map, &tmp)
        .with_context(|| format!("writing {}", a.out.display()))?;
    crate::durable::commit_tmp(&tmp, &a.out)?;
    Ok(())
}
