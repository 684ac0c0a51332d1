//! Safetensors files for weights and statistics: [`TensorFile`] reads one into memory
//! (tensors by name as host vectors, the string metadata, errors that name the file) and
//! [`write`] writes one atomically. Checkpoints have their own loader and writer with
//! checkpoint-specific errors.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::{EmError, Result};

/// A tensor to write: name, element type, shape and little-endian bytes.
pub struct RawTensor {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian element bytes.
    pub bytes: Vec<u8>,
}

impl RawTensor {
    /// An F32 tensor.
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: &[f32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            shape,
            bytes,
        }
    }

    /// An F64 tensor.
    pub fn f64(name: impl Into<String>, shape: Vec<usize>, values: &[f64]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self {
            name: name.into(),
            dtype: Dtype::F64,
            shape,
            bytes,
        }
    }
}

/// Writes `tensors` and `metadata` as a safetensors file, atomically.
pub fn write(path: &Path, tensors: &[RawTensor], metadata: HashMap<String, String>) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    for t in tensors {
        let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).map_err(|e| {
            EmError::invalid(t.name.clone(), "bytes that match the tensor's shape", e)
        })?;
        views.push((t.name.clone(), view));
    }
    let data = safetensors::serialize(views, &Some(metadata))
        .map_err(|e| EmError::invalid(path.display().to_string(), "serialisable tensors", e))?;
    crate::checkpoint::write_atomic(path, &data)
}

/// A parsed safetensors file.
pub struct TensorFile {
    path: PathBuf,
    raw: Vec<u8>,
    /// Name → (dtype, shape, byte range in `raw`).
    tensors: HashMap<String, (Dtype, Vec<usize>, std::ops::Range<usize>)>,
    metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let raw = std::fs::read(path).map_err(|e| EmError::io(path, e))?;
        let bad = |reason: String| EmError::Parse {
            path: path.to_path_buf(),
            reason,
        };
        let (header, meta) = SafeTensors::read_metadata(&raw)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let base = 8 + header;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (s, e) = info.data_offsets;
                (name, (info.dtype, info.shape.clone(), base + s..base + e))
            })
            .collect();
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            metadata: meta.metadata().clone().unwrap_or_default(),
            raw,
        })
    }

    fn err(&self, reason: String) -> EmError {
        EmError::Parse {
            path: self.path.clone(),
            reason,
        }
    }

    /// The SHA-256 of the whole file, in hex.
    pub fn sha256(&self) -> String {
        crate::inception::stats_cache::sha256_hex(&self.raw)
    }

    /// Names of all tensors (in no particular order).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The string metadata of the header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn entry(&self, name: &str) -> Result<&(Dtype, Vec<usize>, std::ops::Range<usize>)> {
        self.tensors
            .get(name)
            .ok_or_else(|| self.err(format!("expected a tensor `{name}`, found none")))
    }

    /// Shape and values (F32 or F64 stored) of tensor `name`, as f64.
    pub fn f64(&self, name: &str) -> Result<(Vec<usize>, Vec<f64>)> {
        let (dtype, shape, range) = self.entry(name)?;
        let bytes = &self.raw[range.clone()];
        let v = match dtype {
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            other => {
                return Err(self.err(format!("`{name}`: expected F32 or F64, found {other:?}")))
            }
        };
        Ok((shape.clone(), v))
    }

    /// Shape and values of tensor `name` stored as F32.
    pub fn f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (dtype, shape, range) = self.entry(name)?;
        if *dtype != Dtype::F32 {
            return Err(self.err(format!("`{name}`: expected F32, found {dtype:?}")));
        }
        let v = self.raw[range.clone()]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape.clone(), v))
    }
}
