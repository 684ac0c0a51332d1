//! Runs on disk: a run directory holds `config.toml`, `metrics.jsonl` (one row per logged
//! step), `checkpoints/`, `samples.npy`, `eval.json` and the PNG plots. This is the layer the
//! `em` binary calls; it reports progress through [`RunEvent`]s and does no terminal output.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::backend::compute;
use crate::checkpoint::{self, CheckpointMeta};
use crate::config::RunConfig;
use crate::data::{write_points, DataSource};
use crate::metrics::{self, SampleMetrics};
use crate::plot::{self, Field, Overlay, Series};
use crate::potential::{Model, Network, Potential};
use crate::rng::{stream, Purpose};
use crate::sampler::{self, Drift, GradField, SampleRequest, SamplerConfig, TrajectoryRecorder};
use crate::schedule::Schedule;
use crate::train::{Phase, StepStats, Trainer, TrainerState};
use crate::{EmError, Points, Result};

/// Progress reported by long operations.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// Training starts or resumes at `from`, ending at `total`.
    TrainStart {
        /// First step to run (1-based).
        from: u64,
        /// Last step.
        total: u64,
    },
    /// One step finished; `logged` when it was written to the metrics file.
    Step {
        /// The step's numbers.
        stats: &'a StepStats,
        /// Steps per second over the last logging interval.
        steps_per_sec: f64,
        /// Whether this step was logged.
        logged: bool,
    },
    /// A checkpoint was written.
    Checkpoint(&'a Path),
    /// Sampling progress: steps done of total (over all chunks).
    Sampling {
        /// Steps done.
        done: u64,
        /// Steps in total.
        total: u64,
    },
    /// FID feature progress: images of `of` (the samples, or the reference) done of total.
    Features {
        /// Which images.
        of: &'a str,
        /// Images done.
        done: u64,
        /// Images in all (0 until known).
        total: u64,
    },
    /// A message worth showing.
    Note(String),
}

/// One row of `metrics.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetricsRow {
    /// The step's numbers.
    #[serde(flatten)]
    pub stats: StepStats,
    /// Steps per second over the logging interval.
    pub steps_per_sec: f64,
    /// Seconds since the (re)start of training.
    pub elapsed_s: f64,
}

/// The end-of-run evaluation written to `eval.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    /// Sample metrics against fresh target points.
    pub metrics: SampleMetrics,
    /// Mean NLL of the target points under exp(−V/ε_max)/Z (2-D only).
    pub grid_nll: Option<f64>,
    /// Which weights were used (`ema` or `raw`).
    pub weights: String,
    /// Sampler settings.
    pub sampler: SamplerConfig,
    /// Seconds spent sampling.
    pub sampling_s: f64,
    /// FID of the samples against `eval.fid_reference` (image runs that set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fid: Option<f64>,
}

/// Paths inside a run directory.
pub struct RunDir(pub PathBuf);

impl RunDir {
    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.toml")
    }
    /// `metrics.jsonl`.
    pub fn metrics(&self) -> PathBuf {
        self.0.join("metrics.jsonl")
    }
    /// `checkpoints/`.
    pub fn checkpoints(&self) -> PathBuf {
        self.0.join("checkpoints")
    }
    /// The stem of the final checkpoint.
    pub fn final_checkpoint(&self) -> PathBuf {
        self.checkpoints().join("final")
    }
    /// The newest checkpoint stem in `checkpoints/` (final if present, else highest step).
    pub fn latest_checkpoint(&self) -> Option<PathBuf> {
        let fin = self.final_checkpoint();
        if checkpoint::paths(&fin).1.exists() {
            return Some(fin);
        }
        let mut steps: Vec<PathBuf> = std::fs::read_dir(self.checkpoints())
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().map(|e| e == "json").unwrap_or(false))
            .map(|p| p.with_extension(""))
            .collect();
        steps.sort();
        steps.pop()
    }
}

/// Builds the data sources of a config.
pub fn data_sources(cfg: &RunConfig) -> Result<(DataSource, DataSource)> {
    let target = DataSource::from_spec(&cfg.data.target, cfg.model.input_dim(), "data.target")?
        .with_hflip(cfg.data.hflip);
    let source = DataSource::from_spec(&cfg.data.source, cfg.model.input_dim(), "data.source")?;
    Ok((target, source))
}

fn meta_for<M: Model>(cfg: &RunConfig, state: &TrainerState<M>, phase: Phase) -> CheckpointMeta {
    CheckpointMeta {
        format_version: checkpoint::FORMAT_VERSION,
        crate_version: env!("CARGO_PKG_VERSION").into(),
        step: state.step,
        phase: phase.name().into(),
        seed: cfg.seed,
        adam_t: state.adam.t,
        has_ema: state.ema.is_some(),
        precision: cfg.precision,
        num_params: state.model.num_params(),
        config: serde_json::to_value(cfg).expect("config serialises"),
    }
}

/// A trainer for `cfg` around an existing state (fresh: [`Trainer::fresh_state`]).
pub fn trainer_for(cfg: &RunConfig, state: TrainerState<Network>) -> Result<Trainer<Network>> {
    let (target, source) = data_sources(cfg)?;
    Ok(Trainer {
        state,
        train: cfg.train.clone(),
        negatives: cfg.negatives.clone(),
        optim: cfg.optim.clone(),
        schedule: cfg.schedule,
        target,
        source,
        seed: cfg.seed,
        precision: cfg.precision,
    })
}

/// Reads the config stored in a checkpoint, applying `overrides`.
pub fn config_from_checkpoint(path: &Path, overrides: &[String]) -> Result<RunConfig> {
    let meta = checkpoint::load_meta(path)?;
    let stored: RunConfig =
        serde_json::from_value(meta.config.clone()).map_err(|e| EmError::Checkpoint {
            path: path.to_path_buf(),
            reason: format!("stored config unreadable: {e}"),
        })?;
    RunConfig::from_toml_str(&stored.to_toml(), overrides)
}

/// Loads a model (EMA weights when `ema` and present) from a checkpoint; returns it with the
/// checkpoint's config and whether EMA weights were used.
pub fn load_model(path: &Path, ema: bool) -> Result<(Network, RunConfig, bool)> {
    let cfg = config_from_checkpoint(path, &[])?;
    let template = cfg.model.init(cfg.seed, &compute(), cfg.precision)?;
    let (state, _) = checkpoint::load(path, &template)?;
    let mut model = state.model;
    let used_ema = ema && state.ema.is_some();
    if let (true, Some(e)) = (used_ema, state.ema) {
        model.set_flat_params(e)?;
    }
    Ok((model, cfg, used_ema))
}

fn append_line(path: &Path, line: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| EmError::io(path, e))?;
    writeln!(f, "{line}").map_err(|e| EmError::io(path, e))
}

/// Trains according to `cfg` in `dir` (created if needed), resuming from `resume` if given.
/// Checkpoints every `log.checkpoint_every` steps and at each phase end; on divergence returns
/// [`EmError::Diverged`] naming the last good checkpoint. Returns the trained trainer.
pub fn train(
    cfg: &RunConfig,
    dir: &Path,
    resume: Option<&Path>,
    events: &mut Events,
) -> Result<Trainer<Network>> {
    let rd = RunDir(dir.to_path_buf());
    std::fs::create_dir_all(rd.checkpoints()).map_err(|e| EmError::io(rd.checkpoints(), e))?;
    checkpoint::write_atomic(&rd.config(), cfg.to_toml().as_bytes())?;
    let device = compute();
    let template = cfg.model.init(cfg.seed, &device, cfg.precision)?;
    let (state, mut last_good) = match resume {
        Some(p) => {
            let (state, meta) = checkpoint::load(p, &template)?;
            events(RunEvent::Note(format!(
                "resumed from {} at step {}",
                p.display(),
                meta.step
            )));
            (state, Some(p.to_path_buf()))
        }
        None => (Trainer::fresh_state(template, &cfg.optim), None),
    };
    let mut trainer = trainer_for(cfg, state)?;
    let total = cfg.train.total_steps();
    events(RunEvent::TrainStart {
        from: trainer.state.step + 1,
        total,
    });
    let start = Instant::now();
    let mut interval_start = Instant::now();
    let mut interval_steps = 0u64;
    while !trainer.finished() {
        let stats = match trainer.step() {
            Ok(s) => s,
            Err(EmError::Diverged {
                step,
                phase,
                what,
                value,
                ..
            }) => {
                return Err(EmError::Diverged {
                    step,
                    phase,
                    what,
                    value,
                    last_good: last_good
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "none (diverged before the first checkpoint)".into()),
                })
            }
            Err(e) => return Err(e),
        };
        interval_steps += 1;
        let step = stats.step;
        let logged = step % cfg.log.every == 0 || step == total || step == 1;
        let sps = interval_steps as f64 / interval_start.elapsed().as_secs_f64().max(1e-9);
        if logged {
            let row = MetricsRow {
                stats: stats.clone(),
                steps_per_sec: sps,
                elapsed_s: start.elapsed().as_secs_f64(),
            };
            append_line(
                &rd.metrics(),
                &serde_json::to_string(&row).expect("row serialises"),
            )?;
            interval_start = Instant::now();
            interval_steps = 0;
        }
        events(RunEvent::Step {
            stats: &stats,
            steps_per_sec: sps,
            logged,
        });
        let phase_end = step == cfg.train.phase1_steps || step == total;
        if step % cfg.log.checkpoint_every == 0 || phase_end {
            let stem = if step == total {
                rd.final_checkpoint()
            } else {
                rd.checkpoints().join(format!("step-{step:08}"))
            };
            let path = checkpoint::save(
                &stem,
                &trainer.state,
                &meta_for(cfg, &trainer.state, stats.phase),
            )?;
            events(RunEvent::Checkpoint(&path));
            last_good = Some(path);
        }
    }
    Ok(trainer)
}

/// Progress callback of long operations (called from one thread at a time).
pub type Events<'a> = dyn FnMut(RunEvent) + Send + 'a;

/// What sampling needs besides the model: where chains start, ε(t), and the integrator.
pub struct SamplingSetup<'a> {
    /// The source distribution x₀.
    pub source: &'a DataSource,
    /// ε(t).
    pub schedule: Schedule,
    /// Integrator settings.
    pub sampler: &'a SamplerConfig,
}

/// Draws `n` samples from `model`.
pub fn draw_samples(
    model: &Network,
    setup: &SamplingSetup,
    n: usize,
    seed: u64,
    recorder: Option<&TrajectoryRecorder>,
    events: &mut Events,
) -> Result<Points> {
    let sampler_cfg = setup.sampler;
    sampler_cfg.validate()?;
    let draw = |r: &mut crate::rng::Rng| setup.source.sample(1, r).into_vec();
    let req = SampleRequest {
        config: sampler_cfg,
        schedule: setup.schedule,
        source: &draw,
        n,
        seed,
        first_index: 0,
    };
    let field = model.host_field()?;
    let total = (sampler_cfg.steps() as u64).saturating_mul(n.div_ceil(sampler_cfg.chunk) as u64);
    let done = AtomicU64::new(0);
    let events = Mutex::new(events);
    let dim = model.dim();
    sampler::sample(&Drift::new(field.as_ref()), &req, &|c, k, t, x| {
        let d = done.fetch_add(1, Ordering::Relaxed) + 1;
        if d.is_multiple_of(10) || d == total {
            if let Ok(mut ev) = events.try_lock() {
                ev(RunEvent::Sampling { done: d, total });
            }
        }
        if let Some(r) = recorder {
            r.observe(c, k, t, x, dim);
        }
    })
}

/// Fresh target points for evaluation (a stream separate from training).
pub fn eval_target(target: &DataSource, seed: u64, n: usize) -> Points {
    target.sample(n, &mut stream(seed, Purpose::Data, 1))
}

/// FID of a run's samples against `reference` (statistics of a dataset through the user's
/// cache, [`crate::inception::StatsCache::user_default`]), reporting feature progress.
fn run_fid(
    samples: &Points,
    shape: crate::data::ImageShape,
    cfg: &RunConfig,
    reference: &str,
    events: &mut Events,
) -> Result<f64> {
    use crate::inception::{self, net::InceptionV3, StatsCache};
    let net = InceptionV3::load(Path::new(&cfg.eval.fid_weights), &compute())?;
    let ours = with_feature_events("samples", events, |progress| {
        let total = samples.len();
        inception::feature_stats(&net, samples, shape, &|done| progress(done, total))
    })?;
    let cache = StatsCache::user_default();
    let (theirs, origin) = with_feature_events(reference, events, |progress| {
        inception::reference_stats(&net, reference, cache.as_ref(), progress)
    })?;
    events(RunEvent::Note(format!(
        "FID reference {reference}: {} images, statistics {origin}",
        theirs.count
    )));
    metrics::frechet_distance(&ours, &theirs)
}

/// Runs `work` on a scoped thread while this one turns the `(done, total)` it reports (from
/// any thread) into [`RunEvent::Features`] about `of`, five times a second.
fn with_feature_events<T: Send>(
    of: &str,
    events: &mut Events,
    work: impl FnOnce(&(dyn Fn(usize, usize) + Sync)) -> T + Send,
) -> T {
    let (done, total) = (AtomicU64::new(0), AtomicU64::new(0));
    let report = |d: usize, t: usize| {
        done.store(d as u64, Ordering::Relaxed);
        total.store(t as u64, Ordering::Relaxed);
    };
    std::thread::scope(|s| {
        let worker = s.spawn(|| work(&report));
        while !worker.is_finished() {
            std::thread::sleep(std::time::Duration::from_millis(200));
            events(RunEvent::Features {
                of,
                done: done.load(Ordering::Relaxed),
                total: total.load(Ordering::Relaxed),
            });
        }
        match worker.join() {
            Ok(out) => out,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The trajectories the plots show: for images 8 samples at ≈ 8 times (the time-evolution
/// grid), otherwise 12 trajectories every 2 steps.
pub fn plot_recorder(cfg: &RunConfig) -> TrajectoryRecorder {
    match cfg.model.image_shape() {
        Some(_) => TrajectoryRecorder::new(cfg.sample.steps().div_ceil(8), 8),
        None => TrajectoryRecorder::new(2, 12),
    }
}

/// Samples with the final weights, evaluates, and draws the plots of a finished run.
pub fn evaluate_run(
    trainer: &Trainer<Network>,
    cfg: &RunConfig,
    dir: &Path,
    events: &mut Events,
) -> Result<EvalReport> {
    let model = trainer.ema_model()?.untracked();
    let weights = if trainer.state.ema.is_some() {
        "ema"
    } else {
        "raw"
    };
    let t0 = Instant::now();
    let rec = plot_recorder(cfg);
    let setup = SamplingSetup {
        source: &trainer.source,
        schedule: cfg.schedule,
        sampler: &cfg.sample,
    };
    let samples = draw_samples(
        &model,
        &setup,
        cfg.eval.samples,
        cfg.seed,
        Some(&rec),
        events,
    )?;
    let sampling_s = t0.elapsed().as_secs_f64();
    write_points(&dir.join("samples.npy"), &samples)?;
    let target = eval_target(&trainer.target, cfg.seed, cfg.eval.target_points);
    let field = model.host_field()?;
    let m = metrics::compare(
        &samples,
        &target,
        cfg.eval.projections,
        cfg.eval.max_pairwise,
        cfg.seed,
    )?;
    let grid_nll = if cfg.model.input_dim() == 2 && cfg.schedule.epsilon_max > 0.0 {
        Some(metrics::grid_nll_2d(
            field.as_ref(),
            cfg.schedule.epsilon_max,
            &target,
            300,
            1.5,
        )?)
    } else {
        None
    };
    let fid = match (cfg.model.image_shape(), &cfg.eval.fid_reference) {
        (Some(shape), Some(reference)) => Some(run_fid(&samples, shape, cfg, reference, events)?),
        _ => None,
    };
    let report = EvalReport {
        metrics: m,
        grid_nll,
        weights: weights.into(),
        sampler: cfg.sample.clone(),
        sampling_s,
        fid,
    };
    checkpoint::write_atomic(
        &dir.join("eval.json"),
        &serde_json::to_vec_pretty(&report).expect("report serialises"),
    )?;
    if cfg.log.plots {
        let frames = rec.into_frames();
        plot_run(
            dir,
            field.as_ref(),
            cfg,
            &trainer.source,
            &samples,
            &target,
            &frames,
        )?;
    }
    Ok(report)
}

/// Potential and density plots (2-D), sample grids (images) and training curves of a run
/// directory.
pub fn plot_run(
    dir: &Path,
    model: &dyn GradField,
    cfg: &RunConfig,
    source: &DataSource,
    samples: &Points,
    target: &Points,
    frames: &[(f64, Points)],
) -> Result<()> {
    if cfg.model.input_dim() == 2 {
        let src = source.sample(2000, &mut stream(cfg.seed, Purpose::Data, 2));
        let (lo, hi) = metrics::bounds_2d(&target.concat(&src)?, 1.0);
        let grid = 160;
        let (gp, _) = metrics::grid_points(lo, hi, grid);
        let v = metrics::energies(model, &gp)?;
        let keep = frames.iter().map(|f| f.1.len()).max().unwrap_or(0);
        let trajectories: Vec<Vec<(f64, f64)>> = (0..keep)
            .map(|i| {
                frames
                    .iter()
                    .filter(|f| i < f.1.len())
                    .map(|f| (f.1.row(i)[0] as f64, f.1.row(i)[1] as f64))
                    .collect()
            })
            .collect();
        let shown = samples.select(&metrics::subsample_indices(samples.len(), 2000, 0));
        plot::field_png(
            &dir.join("potential.png"),
            "V(x) with samples and trajectories",
            &Field {
                values: &v,
                grid,
                lo,
                hi,
                levels: 16,
            },
            &Overlay {
                samples: Some(&shown),
                trajectories,
                ..Overlay::default()
            },
        )?;
        let eps = cfg.schedule.epsilon_max.max(1e-3);
        let vmin = v.iter().cloned().fold(f64::INFINITY, f64::min);
        let dens: Vec<f64> = v.iter().map(|e| (-(e - vmin) / eps).exp()).collect();
        let shown_target = target.select(&metrics::subsample_indices(target.len(), 2000, 1));
        plot::field_png(
            &dir.join("boltzmann.png"),
            &format!("exp(-V/{eps}) (unnormalised) with target points"),
            &Field {
                values: &dens,
                grid,
                lo,
                hi,
                levels: 0,
            },
            &Overlay {
                target: Some(&shown_target),
                ..Overlay::default()
            },
        )?;
    }
    if let Some(shape) = cfg.model.image_shape() {
        image_plots(dir, shape, model, samples, target, frames)?;
    }
    energy_histogram(dir, model, samples, target)?;
    plot_curves(dir)
}

/// `energy_hist.png`: densities of V on target points and on the final samples.
fn energy_histogram(
    dir: &Path,
    model: &dyn GradField,
    samples: &Points,
    target: &Points,
) -> Result<()> {
    let cap = |p: &Points| p.slice_rows(0, p.len().min(5000));
    let (vt, vs) = (
        metrics::energies(model, &cap(target))?,
        metrics::energies(model, &cap(samples))?,
    );
    let finite = || vt.iter().chain(&vs).copied().filter(|v| v.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    if lo >= hi || !lo.is_finite() {
        return Ok(());
    }
    let series = [("V(target)", &vt), ("V(samples)", &vs)].map(|(name, v)| Series {
        name: name.into(),
        points: metrics::histogram(v, lo, hi, 40),
    });
    plot::curves_png(
        &dir.join("energy_hist.png"),
        "energy densities: target vs samples",
        "V",
        &series,
        false,
    )
}

/// `samples.png` and `target.png` (8×8 grids) and `evolution.png` (rows = samples, columns =
/// sampling times, V in each panel) for an image run.
fn image_plots(
    dir: &Path,
    shape: crate::data::ImageShape,
    model: &dyn GradField,
    samples: &Points,
    target: &Points,
    frames: &[(f64, Points)],
) -> Result<()> {
    for (name, set) in [("samples.png", samples), ("target.png", target)] {
        if !set.is_empty() {
            let first = set.slice_rows(0, set.len().min(64));
            plot::image_grid_png(&dir.join(name), &first, shape, 8, 2)?;
        }
    }
    if !frames.is_empty() && frames.iter().all(|f| !f.1.is_empty()) {
        let energies = frames
            .iter()
            .map(|f| metrics::energies(model, &f.1))
            .collect::<Result<Vec<_>>>()?;
        plot::evolution_png(&dir.join("evolution.png"), frames, &energies, shape)?;
    }
    Ok(())
}

/// Reads `metrics.jsonl` of a run directory.
pub fn read_metrics(dir: &Path) -> Result<Vec<MetricsRow>> {
    let path = RunDir(dir.to_path_buf()).metrics();
    let text = std::fs::read_to_string(&path).map_err(|e| EmError::io(&path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| EmError::Parse {
                path: path.clone(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// `loss.png` and `energies.png` from `metrics.jsonl`.
pub fn plot_curves(dir: &Path) -> Result<()> {
    let rows = read_metrics(dir)?;
    let pick = |f: &dyn Fn(&MetricsRow) -> Option<f64>| {
        rows.iter()
            .filter_map(|r| f(r).map(|v| (r.stats.step as f64, v)))
            .collect::<Vec<_>>()
    };
    let mut losses = vec![Series {
        name: "flow loss".into(),
        points: pick(&|r| Some(r.stats.flow_loss)),
    }];
    let cd = pick(&|r| r.stats.cd_loss);
    if !cd.is_empty() {
        losses.push(Series {
            name: "CD term + 1 (phase 2)".into(),
            points: cd.iter().map(|&(s, v)| (s, v + 1.0)).collect(),
        });
    }
    plot::curves_png(
        &dir.join("loss.png"),
        "training losses",
        "step",
        &losses,
        true,
    )?;
    let pos = pick(&|r| r.stats.e_pos.map(|e| e.mean));
    if !pos.is_empty() {
        let series = vec![
            Series {
                name: "mean V(data)".into(),
                points: pos,
            },
            Series {
                name: "mean V(negatives)".into(),
                points: pick(&|r| r.stats.e_neg.map(|e| e.mean)),
            },
            Series {
                name: "min V(negatives)".into(),
                points: pick(&|r| r.stats.e_neg.map(|e| e.min)),
            },
        ];
        plot::curves_png(
            &dir.join("energies.png"),
            "phase-2 energies",
            "step",
            &series,
            false,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_progress_reaches_the_events_and_the_result_comes_back() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let mut seen = Vec::new();
        let mut events = |e: RunEvent| {
            if let RunEvent::Features { of, done, total } = e {
                if (done, total) == (5, 10) {
                    // (the worker may be gone at a later event)
                    let _ = tx.send(());
                }
                seen.push((of.to_string(), done, total));
            }
        };
        let out = with_feature_events("the samples", &mut events, move |progress| {
            progress(5, 10);
            // returns only after the events saw the progress
            rx.recv().unwrap();
            42
        });
        assert_eq!(out, 42);
        assert!(
            seen.contains(&("the samples".to_string(), 5, 10)),
            "{seen:?}"
        );
    }

    #[test]
    #[should_panic(expected = "feature pass failed")]
    fn a_panic_in_the_work_reaches_the_caller() {
        with_feature_events("x", &mut |_| {}, |_| -> () {
            panic!("feature pass failed")
        });
    }
}
