//! Import of official PyTorch MulT weights (`state_dict` saved as safetensors) with the
//! official hyper-parameter JSON: the way researchers bring their trained MulT to mica.

use super::config::{ModelConfig, OfficialMultConfig};
use super::mult::Mult;
use super::params::{Loader, ParamStore};
use anyhow::{Context, Result};
use candle_core::{Device, Tensor};
use std::collections::BTreeMap;
use std::path::Path;

/// Buffers of the official model that carry no parameters (ignored on import).
pub fn is_ignored_buffer(name: &str) -> bool {
    name.ends_with(".version") || name.ends_with("._float_tensor") || name == "version"
}

/// Reads a safetensors file into a name → tensor map (error names the file).
pub fn read_safetensors(path: &Path, device: &Device) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load(path, device)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    Ok(map.into_iter().collect())
}

/// Conv kernel sizes read from `proj_{l,a,v}.weight` (`[d, orig_d, k]`).
fn kernels_from_weights(w: &BTreeMap<String, Tensor>, origin: &str) -> Result<[usize; 3]> {
    let mut ks = [1; 3];
    for (m, short) in ["l", "a", "v"].iter().enumerate() {
        let name = format!("proj_{short}.weight");
        let t = w
            .get(&name)
            .with_context(|| format!("{origin}: missing parameter `{name}`"))?;
        let dims = t.dims();
        anyhow::ensure!(
            dims.len() == 3,
            "{origin}: parameter `{name}` must be [d, orig_d, k], got {dims:?}"
        );
        ks[m] = dims[2];
    }
    Ok(ks)
}

/// Builds a MulT from official weights + config. Every model parameter must be in the
/// file with the right shape, and every tensor of the file must be used (except the
/// `version` / `_float_tensor` buffers); errors name the parameter.
pub fn import_official(
    weights: &Path,
    config: &Path,
    device: &Device,
) -> Result<(ModelConfig, ParamStore, Mult)> {
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("{}: cannot read", config.display()))?;
    let official = OfficialMultConfig::from_json_str(&text, &config.display().to_string())?;
    let tensors = read_safetensors(weights, device)?;
    let origin = weights.display().to_string();
    let cfg = official.to_model_config(kernels_from_weights(&tensors, &origin)?)?;
    let mut loader = Loader::new(tensors, device, &origin);
    let model = Mult::new(&mut loader, &cfg)?;
    let store = loader.finish(is_ignored_buffer)?;
    Ok((cfg, store, model))
}
