//! The run configuration: one TOML file whose tables mirror the library's config structs.
//! Every key has a documented default (`RunConfig::default()` is the toy tutorial), unknown
//! keys are rejected with the closest known key suggested, and `--set key=value` overrides
//! any key by its dotted path.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::backend::Precision;
use crate::potential::ModelConfig;
use crate::sampler::SamplerConfig;
use crate::schedule::Schedule;
use crate::train::{NegativesConfig, OptimConfig, TrainConfig};
use crate::{EmError, Result};

/// Where the data come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Target distribution x₁: a built-in name, a `.csv`/`.npy` path, or an image dataset
    /// (`mnist:DIR`, `fashion-mnist:DIR`, `cifar10:DIR`, `images:DIR`, `-test` variants).
    pub target: String,
    /// Source distribution x₀ (also the start of sampling and of noise-started negatives).
    pub source: String,
    /// Mirror target images left–right at random (image datasets; CIFAR-10 uses it).
    pub hflip: bool,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            target: "two_moons".into(),
            source: "eight_gaussians".into(),
            hflip: false,
        }
    }
}

/// Evaluation done at the end of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Samples drawn from the final model.
    pub samples: usize,
    /// Fresh target points they are compared with.
    pub target_points: usize,
    /// Random directions of the sliced Wasserstein-2 distance.
    pub projections: usize,
    /// Cap on points used by the O(n²) metrics (energy distance, MMD).
    pub max_pairwise: usize,
    /// Image runs: FID of the samples against these reference statistics (a `.safetensors`
    /// file from `em fid --stats-out`) or images (a dataset spec). `None`: no FID.
    pub fid_reference: Option<String>,
    /// Inception-v3 weights for the FID (from `scripts/fetch-inception.sh`).
    pub fid_weights: String,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            samples: 5000,
            target_points: 20_000,
            projections: 200,
            max_pairwise: 5000,
            fid_reference: None,
            fid_weights: "data/inception-2015-12-05.safetensors".into(),
        }
    }
}

/// Logging, checkpoints and plots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Write a metrics row (and a log line) every this many steps.
    pub every: u64,
    /// Write a checkpoint every this many steps (and at the end of each phase).
    pub checkpoint_every: u64,
    /// Draw the plots at the end of the run.
    pub plots: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            every: 100,
            checkpoint_every: 2000,
            plots: true,
        }
    }
}

/// A complete run: the contents of a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Seed of every random stream.
    pub seed: u64,
    /// Float precision (`f32`; `f64` for checks).
    pub precision: Precision,
    /// The potential network.
    pub model: ModelConfig,
    /// Data and source distributions.
    pub data: DataConfig,
    /// τ* and ε_max.
    pub schedule: Schedule,
    /// Training loop.
    pub train: TrainConfig,
    /// Langevin negatives (phase 2).
    pub negatives: NegativesConfig,
    /// Optimiser.
    pub optim: OptimConfig,
    /// Sampler used after training and by `em sample`.
    pub sample: SamplerConfig,
    /// Final evaluation.
    pub eval: EvalConfig,
    /// Logging and checkpoints.
    pub log: LogConfig,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            precision: Precision::F32,
            model: ModelConfig::default(),
            data: DataConfig::default(),
            schedule: Schedule {
                tau_star: 0.8,
                epsilon_max: 0.15,
            },
            train: TrainConfig::default(),
            negatives: NegativesConfig::default(),
            optim: OptimConfig::default(),
            sample: SamplerConfig::default(),
            eval: EvalConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// " (did you mean `x`?)" for the closest candidate within a small distance, else "".
pub fn suggest(word: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min()
        .map(|(_, c)| format!(" (did you mean `{c}`?)"))
        .unwrap_or_default()
}

/// Checks every key of `user` against the known keys in `known` (defaults as JSON).
fn check_keys(
    user: &toml::Table,
    known: &serde_json::Map<String, serde_json::Value>,
    prefix: &str,
) -> Result<()> {
    for (k, v) in user {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match known.get(k) {
            None => {
                let names: Vec<&str> = known.keys().map(String::as_str).collect();
                return Err(EmError::Config {
                    key: path,
                    reason: format!(
                        "unknown key{}; known keys here: {}",
                        suggest(k, &names),
                        names.join(", ")
                    ),
                });
            }
            Some(serde_json::Value::Object(sub)) => {
                if let toml::Value::Table(t) = v {
                    check_keys(t, sub, &path)?;
                } else {
                    return Err(EmError::Config {
                        key: path,
                        reason: format!("expected a table, found {}", v.type_str()),
                    });
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Parses a `--set` value: TOML syntax when it parses, otherwise a bare string.
fn parse_override_value(raw: &str) -> toml::Value {
    match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("key v was just written"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

/// Applies `key=value` to the table tree (creating intermediate tables).
pub fn apply_override(root: &mut toml::Table, spec: &str) -> Result<()> {
    let (key, value) = spec.split_once('=').ok_or_else(|| EmError::Config {
        key: spec.to_string(),
        reason: "expected `--set key=value`, found no `=`".into(),
    })?;
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    let mut table = root;
    for part in &parts[..parts.len() - 1] {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| EmError::Config {
            key: key.to_string(),
            reason: format!("`{part}` is a value, not a table"),
        })?;
    }
    table.insert(
        parts[parts.len() - 1].to_string(),
        parse_override_value(value.trim()),
    );
    Ok(())
}

impl RunConfig {
    /// Parses TOML text plus overrides, validating keys, types and values.
    pub fn from_toml_str(text: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| EmError::Config {
            key: "(file)".into(),
            reason: format!("not valid TOML: {e}"),
        })?;
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let known = serde_json::to_value(RunConfig::default()).expect("defaults serialise");
        check_keys(&table, known.as_object().expect("config is a table"), "")?;
        let cfg: RunConfig =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    // toml ends its message with "in `dotted.key`": move that into the key field
                    let msg = e.to_string();
                    let (reason, key) = match msg.trim().rsplit_once("\nin `") {
                        Some((r, k)) => (r.trim().to_string(), k.trim_end_matches('`').to_string()),
                        None => (msg.trim().to_string(), "(value)".to_string()),
                    };
                    EmError::Config { key, reason }
                })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads a config file (empty path text = defaults) plus overrides.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|e| EmError::io(p, e))?,
            None => String::new(),
        };
        Self::from_toml_str(&text, overrides)
    }

    /// The config as TOML (what a run directory stores).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises to TOML")
    }

    /// Cross-field checks.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        self.train.validate()?;
        Schedule::new(self.schedule.tau_star, self.schedule.epsilon_max).map_err(|e| {
            EmError::Config {
                key: "schedule".into(),
                reason: e.to_string(),
            }
        })?;
        self.sample.validate().map_err(|e| EmError::Config {
            key: "sample".into(),
            reason: e.to_string(),
        })?;
        if !(self.negatives.dt.is_finite() && self.negatives.dt > 0.0) {
            return Err(EmError::Config {
                key: "negatives.dt".into(),
                reason: format!("expected a value > 0, found {}", self.negatives.dt),
            });
        }
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return Err(EmError::Config {
                key: "optim.lr".into(),
                reason: format!("expected a finite value > 0, found {}", self.optim.lr),
            });
        }
        if self.log.every == 0 || self.log.checkpoint_every == 0 {
            return Err(EmError::Config {
                key: "log.every".into(),
                reason: "expected intervals of at least 1 step".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_toy_tutorial_and_round_trip() {
        let c = RunConfig::default();
        assert_eq!(c.train.batch_size, 128);
        assert_eq!((c.schedule.tau_star, c.schedule.epsilon_max), (0.8, 0.15));
        let back = RunConfig::from_toml_str(&c.to_toml(), &[]).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn unknown_keys_are_named_with_a_suggestion() {
        let e = RunConfig::from_toml_str("[optim]\nlrr = 0.1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`optim.lrr`") && e.contains("did you mean `lr`"),
            "{e}"
        );
        let e = RunConfig::from_toml_str("[trian]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`trian`") && e.contains("did you mean `train`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_types_and_values_are_reported() {
        let e = RunConfig::from_toml_str("[optim]\nlr = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("lr") && e.contains("string"), "{e}");
        let e = RunConfig::from_toml_str("[train]\nbatch_size = 1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("train.batch_size"), "{e}");
        let e = RunConfig::from_toml_str("[sample]\ndt = -0.1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("dt"), "{e}");
        let e = RunConfig::from_toml_str("[sample]\nt_end = -1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("t_end"), "{e}");
        let e = RunConfig::from_toml_str("[model]\nhidden = [4, 0]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("model.hidden[1]"), "{e}");
    }

    #[test]
    fn overrides_set_nested_keys_and_are_checked() {
        let c = RunConfig::from_toml_str(
            "",
            &[
                "train.phase1_steps=7".into(),
                "data.target=circles".into(),
                "model.hidden=[8,8]".into(),
                "train.coupling.kind=independent".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.train.phase1_steps, 7);
        assert_eq!(c.data.target, "circles");
        assert_eq!(c.model.hidden, vec![8, 8]);
        assert_eq!(
            c.train.coupling.kind,
            crate::coupling::CouplingKind::Independent
        );
        let e = RunConfig::from_toml_str("", &["train.phase1_step=7".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `phase1_steps`"), "{e}");
        let e = RunConfig::from_toml_str("", &["seed".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key=value"), "{e}");
    }

    #[test]
    fn every_shipped_config_parses_validates_and_round_trips() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = RunConfig::load(Some(&path), &[])
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                c.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert_eq!(RunConfig::from_toml_str(&c.to_toml(), &[]).unwrap(), c);
                seen += 1;
            }
        }
        assert!(seen >= 10, "found {seen} configs");
    }
}
