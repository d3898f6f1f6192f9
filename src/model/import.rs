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
    let bytes = read_safetensors_bytes(path)?;
    tensors_from_bytes(&bytes, path, device)
}

/// Parses the bytes of a safetensors file read by [`read_safetensors_bytes`].
pub fn tensors_from_bytes(
    bytes: &[u8],
    path: &Path,
    device: &Device,
) -> Result<BTreeMap<String, Tensor>> {
    let map = candle_core::safetensors::load_buffer(bytes, device)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    Ok(map.into_iter().collect())
}

/// The bytes of a safetensors file, read header first: the 8-byte header length and the
/// header (at most [`crate::durable::SAFETENSORS_HEADER_CAP`]) say how many data bytes
/// follow, so a device such as `/dev/zero`, a truncated file or one larger than this
/// machine's memory is refused by name before memory is spent.
pub fn read_safetensors_bytes(path: &Path) -> Result<Vec<u8>> {
    use std::io::Read;
    let bad =
        |problem: String| anyhow::anyhow!("{}: not a safetensors file ({problem})", path.display());
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    let meta = f
        .metadata()
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    anyhow::ensure!(
        !meta.is_dir(),
        "{}: is a directory, expected a safetensors file",
        path.display()
    );
    let mut len8 = [0u8; 8];
    f.read_exact(&mut len8)
        .map_err(|_| bad("shorter than the 8-byte header length".into()))?;
    let n = u64::from_le_bytes(len8);
    if n == 0 || n > crate::durable::SAFETENSORS_HEADER_CAP {
        return Err(bad(format!("header length {n}")));
    }
    let mut buf = Vec::with_capacity(8 + n as usize);
    buf.extend_from_slice(&len8);
    (&mut f)
        .take(n)
        .read_to_end(&mut buf)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    if buf.len() as u64 != 8 + n {
        return Err(bad(format!("truncated inside its {n}-byte header")));
    }
    let header: serde_json::Value =
        serde_json::from_slice(&buf[8..]).map_err(|e| bad(format!("header is not JSON: {e}")))?;
    let entries = header
        .as_object()
        .ok_or_else(|| bad("header is not a JSON object".into()))?;
    let mut data_len = 0u64;
    for (name, v) in entries {
        if name == "__metadata__" {
            continue;
        }
        let end = v["data_offsets"][1]
            .as_u64()
            .ok_or_else(|| bad(format!("tensor `{name}` has no data_offsets")))?;
        data_len = data_len.max(end);
    }
    let total = 8 + n + data_len;
    if meta.is_file() && meta.len() != total {
        return Err(bad(format!(
            "{} bytes, but its header describes {total}: truncated or corrupted",
            meta.len()
        )));
    }
    let limit = crate::model::memory::limit_bytes();
    anyhow::ensure!(
        u128::from(total) <= limit,
        "{}: {} of tensors, more than this machine's {}",
        path.display(),
        crate::model::memory::human(total.into()),
        crate::model::memory::human(limit)
    );
    buf.reserve(data_len as usize);
    f.take(data_len)
        .read_to_end(&mut buf)
        .with_context(|| format!("{}: cannot read safetensors", path.display()))?;
    if buf.len() as u64 != total {
        return Err(bad(format!("truncated: {} of {total} bytes", buf.len())));
    }
    Ok(buf)
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
    let text =
        crate::durable::read_string_capped(config, crate::durable::SMALL_FILE_CAP, "config")?;
    let official = OfficialMultConfig::from_json_str(&text, &config.display().to_string())?;
    let tensors = read_safetensors(weights, device)?;
    let origin = weights.display().to_string();
    let cfg = official.to_model_config(kernels_from_weights(&tensors, &origin)?)?;
    let mut loader = Loader::new(tensors, device, &origin);
    let model = Mult::new(&mut loader, &cfg)?;
    let store = loader.finish(is_ignored_buffer)?;
    Ok((cfg, store, model))
}
