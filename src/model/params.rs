//! Parameter store: every trainable tensor of a model, by its official (PyTorch) name.
//!
//! Models are built through [`ParamSource`], which either creates fresh parameters with
//! the official initialisation ([`Initializer`]) or takes them from a state dict
//! ([`Loader`], used by `mica import-mult` and checkpoint loading). Both record the
//! created [`Var`]s in a [`ParamStore`], ordered by name, so optimisers and checkpoints
//! see one deterministic list.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};

/// How a fresh parameter is initialised (PyTorch's rules, spec/mult.md "Initialisation").
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Xavier-uniform over the whole matrix: `U(-a, a)`, `a = sqrt(6 / (fan_in + fan_out))`.
    XavierUniform,
    /// `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`: PyTorch's default for Linear / Conv weights
    /// (kaiming-uniform with `a = sqrt(5)`) and biases; `fan_in` given explicitly.
    FanInUniform(usize),
    /// A constant (zero biases, LayerNorm weights of one).
    Const(f32),
}

/// All parameters of a model, by name (BTreeMap: deterministic order).
#[derive(Debug, Clone, Default)]
pub struct ParamStore {
    /// Trainable variables by official name.
    pub vars: BTreeMap<String, Var>,
}

impl ParamStore {
    /// Number of scalar parameters.
    pub fn num_scalars(&self) -> usize {
        self.vars.values().map(|v| v.elem_count()).sum()
    }

    /// The parameters as plain tensors (e.g. to save them).
    pub fn tensors(&self) -> BTreeMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect()
    }

    /// Saves every parameter to a safetensors file (PyTorch names).
    pub fn save(&self, path: &std::path::Path) -> Result<()> {
        let map: std::collections::HashMap<String, Tensor> = self.tensors().into_iter().collect();
        candle_core::safetensors::save(&map, path)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Overwrites every parameter with the tensor of the same name (shapes must agree).
    pub fn assign_from(&self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        for (name, var) in &self.vars {
            let t = tensors
                .get(name)
                .with_context(|| format!("parameter `{name}` missing"))?;
            if t.dims() != var.dims() {
                bail!(
                    "parameter `{name}`: shape {:?} does not match the model's {:?}",
                    t.dims(),
                    var.dims()
                );
            }
            var.set(&t.to_dtype(DType::F32)?)?;
        }
        Ok(())
    }
}

/// Where a model gets its parameters from while it is being built.
pub trait ParamSource {
    /// Returns the parameter `name` of the given shape (creating or loading it).
    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor>;
    /// The device parameters live on.
    fn device(&self) -> &Device;
    /// The store holding every parameter handed out so far.
    fn store(&self) -> &ParamStore;
}

/// Creates fresh parameters with the official initialisation, from a seeded RNG.
/// Parameters are drawn in the order the model asks for them, so the same seed gives
/// the same model.
pub struct Initializer {
    rng: ChaCha8Rng,
    device: Device,
    store: ParamStore,
}

impl Initializer {
    /// A new initializer seeded with `seed`.
    pub fn new(seed: u64, device: &Device) -> Self {
        use rand::SeedableRng;
        Initializer {
            rng: ChaCha8Rng::seed_from_u64(seed),
            device: device.clone(),
            store: ParamStore::default(),
        }
    }

    /// Finishes building and returns the parameters.
    pub fn into_store(self) -> ParamStore {
        self.store
    }
}

fn uniform(rng: &mut ChaCha8Rng, n: usize, bound: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-bound..=bound)).collect()
}

impl ParamSource for Initializer {
    fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let values = match init {
            Init::XavierUniform => {
                // PyTorch: fan_in = size(1) * receptive, fan_out = size(0) * receptive.
                let receptive: usize = shape[2..].iter().product::<usize>().max(1);
                let fan_in = shape[1] * receptive;
                let fan_out = shape[0] * receptive;
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt() as f32;
                uniform(&mut self.rng, n, bound)
            }
            Init::FanInUniform(fan_in) => {
                let bound = (1.0 / fan_in.max(1) as f64).sqrt() as f32;
                uniform(&mut self.rng, n, bound)
            }
            Init::Const(c) => vec![c; n],
        };
        let var = Var::from_tensor(&Tensor::from_vec(values, shape, &self.device)?)?;
        let t = var.as_tensor().clone();
        if self.store.vars.insert(name.to_string(), var).is_some() {
            bail!("internal: parameter `{name}` created twice");
        }
        Ok(t)
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn store(&self) -> &ParamStore {
        &self.store
    }
}

/// Takes parameters from a state dict (name → tensor), checking every name and shape.
/// After building, [`Loader::finish`] fails on names the model did not use.
pub struct Loader {
    tensors: BTreeMap<String, Tensor>,
    used: BTreeSet<String>,
    device: Device,
    store: ParamStore,
    origin: String,
}

impl Loader {
    /// A loader over `tensors`; `origin` names the file in error messages.
    pub fn new(tensors: BTreeMap<String, Tensor>, device: &Device, origin: &str) -> Self {
        Loader {
            tensors,
            used: BTreeSet::new(),
            device: device.clone(),
            store: ParamStore::default(),
            origin: origin.to_string(),
        }
    }

    /// Finishes building: every tensor of the state dict must have been used, except
    /// names for which `ignore` returns true (e.g. PyTorch's `version` buffers).
    pub fn finish(self, ignore: impl Fn(&str) -> bool) -> Result<ParamStore> {
        let unknown: Vec<&String> = self
            .tensors
            .keys()
            .filter(|k| !self.used.contains(*k) && !ignore(k))
            .collect();
        if !unknown.is_empty() {
            bail!(
                "{}: unknown parameter(s) not used by the model: {}",
                self.origin,
                unknown
                    .iter()
                    .map(|s| format!("`{s}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        Ok(self.store)
    }
}

impl ParamSource for Loader {
    fn param(&mut self, name: &str, shape: &[usize], _init: Init) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("{}: missing parameter `{name}`", self.origin))?;
        if t.dims() != shape {
            bail!(
                "{}: parameter `{name}` has shape {:?}, the model expects {:?}",
                self.origin,
                t.dims(),
                shape
            );
        }
        let t = t.to_dtype(DType::F32)?.to_device(&self.device)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.used.insert(name.to_string());
        self.store.vars.insert(name.to_string(), var);
        Ok(out)
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn store(&self) -> &ParamStore {
        &self.store
    }
}
