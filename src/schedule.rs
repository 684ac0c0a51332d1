//! Time schedules of Energy Matching: the temperature ε(t) and the flow-loss weight w(t).
//!
//! Pure functions of `t` (sampling time: 0 at noise, data reached near 1). Training, sampling,
//! plots and tests all use this one definition.

use serde::{Deserialize, Serialize};

/// The piecewise-linear schedules defined by a cutoff τ* and a maximal temperature ε_max.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// τ* ∈ (0, 1]: below it the dynamics are a deterministic gradient flow.
    pub tau_star: f64,
    /// ε_max ≥ 0: the Langevin temperature reached at t = 1.
    pub epsilon_max: f64,
}

impl Schedule {
    /// Creates a schedule; τ* must lie in (0, 1] and ε_max must be ≥ 0.
    pub fn new(tau_star: f64, epsilon_max: f64) -> crate::Result<Self> {
        if !(tau_star > 0.0 && tau_star <= 1.0) {
            return Err(crate::EmError::invalid(
                "tau_star",
                "a value in (0, 1]",
                tau_star,
            ));
        }
        if !(epsilon_max >= 0.0 && epsilon_max.is_finite()) {
            return Err(crate::EmError::invalid(
                "epsilon_max",
                "a finite value >= 0",
                epsilon_max,
            ));
        }
        Ok(Self {
            tau_star,
            epsilon_max,
        })
    }

    /// ε(t): 0 for t < τ*, linear from 0 to ε_max on [τ*, 1), ε_max for t ≥ 1.
    pub fn temperature(&self, t: f64) -> f64 {
        if t >= 1.0 {
            self.epsilon_max
        } else if t < self.tau_star {
            0.0
        } else {
            self.epsilon_max * (t - self.tau_star) / (1.0 - self.tau_star)
        }
    }

    /// w(t): 1 for t < τ*, linear from 1 to 0 on [τ*, 1), 0 for t ≥ 1.
    pub fn flow_weight(&self, t: f64) -> f64 {
        if t >= 1.0 {
            0.0
        } else if t < self.tau_star {
            1.0
        } else {
            1.0 - (t - self.tau_star) / (1.0 - self.tau_star)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_is_piecewise_linear_and_continuous() {
        let s = Schedule::new(0.8, 0.15).unwrap();
        assert_eq!(s.temperature(0.0), 0.0);
        assert_eq!(s.temperature(0.79), 0.0);
        assert_eq!(s.temperature(0.8), 0.0);
        // halfway through the ramp: ε_max / 2
        assert!((s.temperature(0.9) - 0.075).abs() < 1e-12);
        assert!((s.temperature(1.0 - 1e-12) - 0.15).abs() < 1e-9);
        assert_eq!(s.temperature(1.0), 0.15);
        assert_eq!(s.temperature(2.6), 0.15);
    }

    #[test]
    fn flow_weight_mirrors_temperature() {
        let s = Schedule::new(0.8, 0.15).unwrap();
        for k in 0..300 {
            let t = k as f64 * 0.01;
            let w = s.flow_weight(t);
            assert!((0.0..=1.0).contains(&w));
            if t < 1.0 {
                // w(t) = 1 − ε(t)/ε_max on [0, 1)
                assert!((w - (1.0 - s.temperature(t) / 0.15)).abs() < 1e-12, "t={t}");
            } else {
                assert_eq!(w, 0.0);
            }
        }
    }

    #[test]
    fn tau_star_one_is_a_step() {
        let s = Schedule::new(1.0, 0.01).unwrap();
        assert_eq!(s.temperature(0.999), 0.0);
        assert_eq!(s.temperature(1.0), 0.01);
        assert_eq!(s.flow_weight(0.999), 1.0);
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(Schedule::new(0.0, 0.1).is_err());
        assert!(Schedule::new(1.5, 0.1).is_err());
        let e = Schedule::new(0.5, -1.0).unwrap_err().to_string();
        assert!(e.contains("epsilon_max"), "{e}");
    }
}
