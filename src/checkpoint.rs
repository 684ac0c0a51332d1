//! Checkpoints: weights, EMA weights and Adam moments in one safetensors file (keys
//! `model.<name>`, `ema.<name>`, `adam.m.<name>`, `adam.v.<name>`, shapes as the layers hold
//! them) plus a JSON sidecar with the config, step, phase, seed and crate version.
//!
//! Every random stream is derived from (seed, purpose, step), so (seed, step) is the whole RNG
//! state: a resumed run draws exactly the numbers an uninterrupted one would. Files are written
//! atomically (temporary file, fsync, rename) so a crash never leaves a half-written checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::backend::{to_f64_vec, vector, Precision};
use crate::potential::Model;
use crate::train::optim::Adam;
use crate::train::TrainerState;
use crate::{EmError, Result};

/// Sidecar format version written by this crate.
pub const FORMAT_VERSION: u32 = 1;

/// The JSON sidecar of a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// Sidecar format version.
    pub format_version: u32,
    /// Version of the crate that wrote it.
    pub crate_version: String,
    /// Completed optimisation steps.
    pub step: u64,
    /// `phase1` or `phase2` (phase of the last completed step).
    pub phase: String,
    /// The run seed; with `step` it is the complete RNG state.
    pub seed: u64,
    /// Adam's update count.
    pub adam_t: u64,
    /// Whether EMA weights are stored.
    pub has_ema: bool,
    /// `f32` or `f64`.
    pub precision: Precision,
    /// Number of parameters.
    pub num_params: usize,
    /// The resolved run configuration.
    pub config: serde_json::Value,
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| EmError::io(dir, e))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| EmError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| EmError::io(&tmp, e))?;
    f.sync_all().map_err(|e| EmError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| EmError::io(path, e))
}

/// The two files of a checkpoint given either of them or their common stem.
pub fn paths(p: &Path) -> (PathBuf, PathBuf) {
    let stem = match p.extension().and_then(|e| e.to_str()) {
        Some("safetensors") | Some("json") => p.with_extension(""),
        _ => p.to_path_buf(),
    };
    let with = |ext: &str| {
        let mut s = stem.clone().into_os_string();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".safetensors"), with(".json"))
}

fn to_bytes(t: &Tensor<1>, p: Precision) -> Vec<u8> {
    let v = to_f64_vec(t.clone());
    match p {
        Precision::F32 => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
        Precision::F64 => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
    }
}

/// Saves a training state; returns the safetensors path.
pub fn save<M: Model>(
    stem: &Path,
    state: &TrainerState<M>,
    meta: &CheckpointMeta,
) -> Result<PathBuf> {
    let (st_path, json_path) = paths(stem);
    let names = state.model.param_names();
    let shapes = state.model.param_shapes();
    let p = meta.precision;
    let dtype = match p {
        Precision::F32 => Dtype::F32,
        Precision::F64 => Dtype::F64,
    };
    let mut groups: Vec<(&str, Vec<Tensor<1>>)> = vec![("model", state.model.flat_params())];
    if let Some(e) = &state.ema {
        groups.push(("ema", e.clone()));
    }
    groups.push(("adam.m", state.adam.m.clone()));
    groups.push(("adam.v", state.adam.v.clone()));
    let mut buffers: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (prefix, tensors) in &groups {
        for ((t, name), shape) in tensors.iter().zip(&names).zip(&shapes) {
            buffers.push((format!("{prefix}.{name}"), shape.clone(), to_bytes(t, p)));
        }
    }
    let views: Vec<(String, TensorView)> = buffers
        .iter()
        .map(|(n, s, b)| {
            let v = TensorView::new(dtype, s.clone(), b).map_err(|e| EmError::Checkpoint {
                path: st_path.clone(),
                reason: format!("cannot encode {n}: {e}"),
            })?;
            Ok((n.clone(), v))
        })
        .collect::<Result<_>>()?;
    let mut info = HashMap::new();
    info.insert("format".to_string(), "energy-matching".to_string());
    let bytes =
        safetensors::tensor::serialize(views, &Some(info)).map_err(|e| EmError::Checkpoint {
            path: st_path.clone(),
            reason: format!("cannot serialise: {e}"),
        })?;
    write_atomic(&st_path, &bytes)?;
    let json = serde_json::to_vec_pretty(meta).expect("metadata serialises");
    write_atomic(&json_path, &json)?;
    Ok(st_path)
}

/// Reads a checkpoint's sidecar.
pub fn load_meta(path: &Path) -> Result<CheckpointMeta> {
    let (_, json_path) = paths(path);
    let text = std::fs::read_to_string(&json_path).map_err(|e| EmError::io(&json_path, e))?;
    serde_json::from_str(&text).map_err(|e| EmError::Checkpoint {
        path: json_path.clone(),
        reason: format!("unreadable metadata: {e}"),
    })
}

/// Loads a training state into a model of the expected architecture (`template`), checking
/// every name and shape.
pub fn load<M: Model>(path: &Path, template: &M) -> Result<(TrainerState<M>, CheckpointMeta)> {
    let meta = load_meta(path)?;
    let (st_path, _) = paths(path);
    let bytes = std::fs::read(&st_path).map_err(|e| EmError::io(&st_path, e))?;
    let ck_err = |reason: String| EmError::Checkpoint {
        path: st_path.clone(),
        reason,
    };
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| ck_err(format!("corrupt safetensors file: {e}")))?;
    let names = template.param_names();
    let shapes = template.param_shapes();
    let device = crate::backend::compute();
    let read_group = |prefix: &str| -> Result<Vec<Tensor<1>>> {
        names
            .iter()
            .zip(&shapes)
            .map(|(name, shape)| {
                let key = format!("{prefix}.{name}");
                let view = st.tensor(&key).map_err(|_| {
                    ck_err(format!("expected tensor `{key}` for a model with {} parameters, not found (is this checkpoint from another architecture?)", template.num_params()))
                })?;
                if view.shape() != shape.as_slice() {
                    return Err(ck_err(format!(
                        "tensor `{key}`: expected shape {shape:?} for the configured model, found {:?}",
                        view.shape()
                    )));
                }
                let values: Vec<f64> = match view.dtype() {
                    Dtype::F32 => view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
                    Dtype::F64 => view.data().chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
                    other => return Err(ck_err(format!("tensor `{key}`: expected f32 or f64, found {other:?}"))),
                };
                Ok(vector(values, &device, meta.precision))
            })
            .collect()
    };
    let mut model = template.untracked();
    model.set_flat_params(read_group("model")?)?;
    let ema = if meta.has_ema {
        Some(read_group("ema")?)
    } else {
        None
    };
    let adam = Adam {
        m: read_group("adam.m")?,
        v: read_group("adam.v")?,
        t: meta.adam_t,
    };
    Ok((
        TrainerState {
            model,
            ema,
            adam,
            step: meta.step,
        },
        meta,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{cpu, Precision};
    use crate::potential::MlpConfig;
    use crate::train::{OptimConfig, Trainer};

    #[test]
    fn save_then_load_round_trips_every_tensor_exactly() {
        let d = tempfile::tempdir().unwrap();
        let cfg = MlpConfig {
            hidden: vec![5, 4],
            ..MlpConfig::default()
        };
        let model = cfg.init(7, &cpu(), Precision::F32).unwrap();
        let optim = OptimConfig {
            ema_decay_phase1: Some(0.9),
            ..OptimConfig::default()
        };
        let mut state = Trainer::fresh_state(model, &optim);
        state.step = 42;
        state.adam.t = 42;
        let meta = CheckpointMeta {
            format_version: FORMAT_VERSION,
            crate_version: "test".into(),
            step: 42,
            phase: "phase1".into(),
            seed: 7,
            adam_t: 42,
            has_ema: true,
            precision: Precision::F32,
            num_params: state.model.num_params(),
            config: serde_json::json!({}),
        };
        let st = save(&d.path().join("ck"), &state, &meta).unwrap();
        assert_eq!(st, d.path().join("ck.safetensors"));
        // any of the two files or the stem names the checkpoint
        for p in ["ck", "ck.json", "ck.safetensors"] {
            let (loaded, m) = load(&d.path().join(p), &state.model).unwrap();
            assert_eq!((m.step, loaded.step, loaded.adam.t), (42, 42, 42));
            let flat =
                |v: Vec<burn::tensor::Tensor<1>>| v.into_iter().map(to_f64_vec).collect::<Vec<_>>();
            assert_eq!(
                flat(loaded.model.flat_params()),
                flat(state.model.flat_params())
            );
            assert_eq!(flat(loaded.ema.unwrap()), flat(state.ema.clone().unwrap()));
        }
        // no temporary files are left behind
        let names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
