//! Hidden-layer activations with their derivatives as tensor expressions.

use burn::tensor::{activation, Tensor};
use serde::{Deserialize, Serialize};

/// A pointwise nonlinearity a(z) with a known derivative a'(z).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(z, 0); derivative 1[z > 0] (0 at the kink).
    Relu,
    /// z·σ(z); derivative σ(z)(1 + z(1 − σ(z))).
    Silu,
    /// log(1 + eᶻ); derivative σ(z).
    Softplus,
    /// tanh z; derivative 1 − tanh² z.
    Tanh,
    /// z·Φ(z) (exact, erf form); derivative Φ(z) + z·φ(z).
    Gelu,
}

impl Activation {
    /// All variants, for tests and help texts.
    pub const ALL: [Activation; 5] = [
        Activation::Relu,
        Activation::Silu,
        Activation::Softplus,
        Activation::Tanh,
        Activation::Gelu,
    ];

    /// a(z).
    pub fn apply<const D: usize>(self, z: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Relu => activation::relu(z),
            Activation::Silu => activation::silu(z),
            Activation::Softplus => activation::softplus(z, 1.0),
            Activation::Tanh => z.tanh(),
            Activation::Gelu => activation::gelu(z),
        }
    }

    /// (a(z), a'(z)), sharing intermediate results.
    pub fn apply_with_derivative<const D: usize>(self, z: Tensor<D>) -> (Tensor<D>, Tensor<D>) {
        match self {
            Activation::Relu => {
                let d = z.clone().greater_elem(0.0).float().cast(z.dtype());
                (activation::relu(z), d)
            }
            Activation::Silu => {
                let s = activation::sigmoid(z.clone());
                let a = z.clone() * s.clone();
                // σ + z σ (1 − σ) = σ + a (1 − σ)
                let d = s.clone() + a.clone() * (s.neg() + 1.0);
                (a, d)
            }
            Activation::Softplus => {
                let d = activation::sigmoid(z.clone());
                (activation::softplus(z, 1.0), d)
            }
            Activation::Tanh => {
                let a = z.tanh();
                let d = a.clone().powi_scalar(2).neg() + 1.0;
                (a, d)
            }
            Activation::Gelu => {
                const INV_SQRT2: f64 = std::f64::consts::FRAC_1_SQRT_2;
                const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;
                let cdf = (z.clone() * INV_SQRT2).erf() * 0.5 + 0.5;
                let pdf = (z.clone().powi_scalar(2) * -0.5).exp() * INV_SQRT_2PI;
                let a = z.clone() * cdf.clone();
                (a, cdf + z * pdf)
            }
        }
    }
}

impl std::str::FromStr for Activation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            "softplus" => Ok(Activation::Softplus),
            "tanh" => Ok(Activation::Tanh),
            "gelu" => Ok(Activation::Gelu),
            other => Err(format!(
                "unknown activation `{other}` (expected relu, silu, softplus, tanh or gelu)"
            )),
        }
    }
}
