//! The one place that knows which burn device and float type the crate computes with, and how
//! host [`Points`] become tensors and back.
//!
//! burn 0.22 has no backend type parameter: a tensor carries its device, its dtype and whether
//! autodiff records it. Tensor work (the conv and UNet-ViT potentials, autodiff training steps,
//! FID's Inception) runs on [`compute`]: burn's pure-Rust `flex` CPU backend unless a GPU was
//! chosen with [`select`] (cargo features `wgpu`, `vulkan`, `cuda`; see BENCHMARKS.md for what
//! builds and runs where). The fused MLP kernels always run on the host. Tests use [`cpu`].

use std::sync::OnceLock;

use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::{EmError, Points, Result};

/// The plain CPU device (burn's pure-Rust `flex` backend), without autodiff.
pub fn cpu() -> Device {
    Device::flex()
}

/// Whether `device` is the plain CPU device, where the host kernels beat burn's tensor ops.
pub fn is_cpu(device: &Device) -> bool {
    *device == Device::flex()
}

/// The same device with first-order autodiff enabled.
pub fn cpu_autodiff() -> Device {
    Device::flex().autodiff()
}

/// Where tensor computations run (`em --device`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accelerator {
    /// burn's `flex` CPU backend (always built).
    #[default]
    Cpu,
    /// burn's wgpu backend on the best adapter wgpu finds (cargo feature `wgpu`).
    Wgpu,
    /// burn's wgpu backend pinned to Vulkan (cargo feature `vulkan`).
    Vulkan,
    /// burn's CUDA backend (cargo feature `cuda`; needs network at build time).
    Cuda,
}

impl Accelerator {
    /// All choices, for help texts.
    pub const ALL: [Accelerator; 4] = [
        Accelerator::Cpu,
        Accelerator::Wgpu,
        Accelerator::Vulkan,
        Accelerator::Cuda,
    ];

    /// The name used on the command line and in cargo features.
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Cpu => "cpu",
            Accelerator::Wgpu => "wgpu",
            Accelerator::Vulkan => "vulkan",
            Accelerator::Cuda => "cuda",
        }
    }

    /// The burn device, or an error naming the cargo feature this build lacks.
    pub fn device(self) -> Result<Device> {
        let missing = || {
            Err(EmError::invalid(
                "device",
                format!(
                    "a build with the `{0}` backend (cargo build --release --features {0})",
                    self.name()
                ),
                format!("`{}` in a build without it", self.name()),
            ))
        };
        match self {
            Accelerator::Cpu => Ok(Device::flex()),
            #[cfg(feature = "wgpu")]
            Accelerator::Wgpu => Ok(Device::wgpu(burn::tensor::DeviceKind::default())),
            #[cfg(feature = "vulkan")]
            Accelerator::Vulkan => Ok(Device::vulkan(burn::tensor::DeviceKind::default())),
            #[cfg(feature = "cuda")]
            Accelerator::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            _ => missing(),
        }
    }
}

impl std::str::FromStr for Accelerator {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        Accelerator::ALL
            .into_iter()
            .find(|a| a.name() == s.to_ascii_lowercase())
            .ok_or_else(|| format!("expected one of cpu, wgpu, vulkan, cuda; found `{s}`"))
    }
}

static SELECTED: OnceLock<Device> = OnceLock::new();

/// Chooses the device of [`compute`] for the rest of the process (once, before any tensor work).
pub fn select(accelerator: Accelerator) -> Result<()> {
    let device = accelerator.device()?;
    if SELECTED.set(device.clone()).is_err() && SELECTED.get() != Some(&device) {
        return Err(EmError::invalid(
            "device",
            "one device per process",
            format!("a second choice, `{}`", accelerator.name()),
        ));
    }
    Ok(())
}

/// The device tensor work runs on: the one [`select`]ed, else the `flex` CPU backend.
pub fn compute() -> Device {
    SELECTED.get().cloned().unwrap_or_else(Device::flex)
}

/// [`compute`] with first-order autodiff enabled.
pub fn compute_autodiff() -> Device {
    compute().autodiff()
}

/// Float precision of a model or computation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit floats (training and sampling).
    #[default]
    F32,
    /// 64-bit floats (derivative checks).
    F64,
}

impl Precision {
    /// The burn dtype.
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// A `[rows, cols]` tensor from row-major f64 values.
pub fn matrix(
    values: Vec<f64>,
    rows: usize,
    cols: usize,
    device: &Device,
    p: Precision,
) -> Tensor<2> {
    let data = match p {
        Precision::F64 => TensorData::new(values, [rows, cols]),
        Precision::F32 => TensorData::new(
            values.into_iter().map(|v| v as f32).collect::<Vec<_>>(),
            [rows, cols],
        ),
    };
    Tensor::from_data(data, (device, p.dtype()))
}

/// A `[n]` tensor from f64 values.
pub fn vector(values: Vec<f64>, device: &Device, p: Precision) -> Tensor<1> {
    let n = values.len();
    matrix(values, 1, n, device, p).reshape([n])
}

/// A `[n]` f32 tensor from f32 values.
pub fn vector_f32(values: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), (device, DType::F32))
}

/// A `[n, dim]` tensor holding the points.
pub fn from_points(x: &Points, device: &Device, p: Precision) -> Tensor<2> {
    let data = match p {
        Precision::F32 => TensorData::new(x.as_slice().to_vec(), [x.len(), x.dim()]),
        Precision::F64 => TensorData::new(
            x.as_slice().iter().map(|&v| v as f64).collect::<Vec<_>>(),
            [x.len(), x.dim()],
        ),
    };
    Tensor::from_data(data, (device, p.dtype()))
}

/// Reads a tensor's values as f64 (any float dtype).
pub fn to_f64_vec<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f64>()
        .try_into_vec::<f64>()
        .expect("a float tensor converts to f64")
}

/// Reads a tensor's values as f32 (any float dtype; an f32 tensor's data is moved, not
/// converted through f64 — the host kernels copy every parameter each training step).
pub fn to_f32_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("a float tensor converts to f32")
}

/// Reads a `[n, dim]` tensor back into points (as f32).
pub fn to_points(t: Tensor<2>) -> Result<Points> {
    let [n, d] = t.dims();
    let v = t
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| EmError::shape("to_points", "a float tensor", format!("{e:?}")))?;
    Points::new(n, d, v)
}

/// A scalar tensor's value.
pub fn scalar(t: Tensor<1>) -> f64 {
    to_f64_vec(t)[0]
}
