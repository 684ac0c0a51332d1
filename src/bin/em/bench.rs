//! `em bench`: wall-clock medians of the hot paths on this machine, as a Markdown table: the toy
//! tutorial's (default) or an image network's (`--net CONFIG`).
//! Thread count: `--threads` (the global rayon pool; `RAYON_NUM_THREADS` does the same).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;

use energy_matching::backend::{compute, from_points, Precision};
use energy_matching::config::RunConfig;
use energy_matching::coupling::{assignment, sq_euclidean_cost};
use energy_matching::data::Toy;
use energy_matching::potential::{Model, Potential};
use energy_matching::rng::{stream, Purpose};
use energy_matching::run::trainer_for;
use energy_matching::sampler::{
    rows_per_block, sample, step, Drift, SampleRequest, SamplerConfig, SamplerKind, Scratch,
};
use energy_matching::train::Trainer;
use rayon::prelude::*;

/// Benchmark options.
#[derive(Args)]
pub struct BenchArgs {
    /// Worker threads for burn's CPU kernels (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Repetitions per measurement (the median is reported).
    #[arg(long, default_value_t = 20)]
    reps: usize,
    /// Phase-2 steps to time (each runs the config's Langevin negatives; 0 skips them).
    #[arg(long, default_value_t = 5)]
    phase2_reps: usize,
    /// Time this run config's network instead of the toy tutorial (e.g.
    /// configs/mnist_unet_vit.toml): phase-1 and phase-2 training steps, one ∇V evaluation and
    /// sampler throughput, on standard-normal "images" of the config's shape.
    #[arg(long)]
    net: Option<PathBuf>,
    /// Batch size for `--net` (training batch, Langevin chains and sampler block).
    #[arg(long, default_value_t = 16)]
    batch: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    median(
        (0..reps)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect(),
    )
}

/// Runs the benchmarks and prints the table.
pub fn run(a: BenchArgs) -> Result<()> {
    if let Some(t) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    let threads = a
        .threads
        .map(|t| t.to_string())
        .unwrap_or_else(|| "all".into());
    println!("| measurement (threads: {threads}) | value | unit |");
    println!("|---|---:|---|");
    match &a.net {
        Some(path) => net_rows(path, &a)?,
        None => toy_rows(&a)?,
    };
    Ok(())
}

/// Prints one row of the table as soon as it is measured: a benchmark stopped by a time limit
/// (a slow GPU backend, say) still leaves the rows it finished.
fn print_row(name: impl std::fmt::Display, v: f64, unit: &str) {
    println!("| {name} | {v:.3} | {unit} |");
}

/// An image network from a run config: training steps through the real [`Trainer`] (data
/// replaced by standard-normal draws of the same shape), ∇V, and the sampler.
fn net_rows(path: &std::path::Path, a: &BenchArgs) -> Result<()> {
    let b = a.batch.to_string();
    let cfg = RunConfig::load(
        Some(path),
        &[
            "data.target=\"standard_normal\"".into(),
            format!("train.batch_size={b}"),
            format!("sample.chunk={b}"),
        ],
    )?;
    let model = cfg.model.init(0, &compute(), Precision::F32)?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let what = format!("{name}, {} parameters, batch {b}", model.num_params());
    let mut trainer = trainer_for(&cfg, Trainer::fresh_state(model.clone(), &cfg.optim))?;
    let ms = time_ms(a.reps, || {
        trainer.step().expect("benchmark step");
    });
    print_row(format!("phase-1 step ({what})"), ms, "ms");
    if a.phase2_reps > 0 {
        trainer.train.phase1_steps = 0;
        let ms = time_ms(a.phase2_reps, || {
            trainer.step().expect("benchmark step");
        });
        let gibbs = cfg.negatives.n_gibbs;
        print_row(
            format!("phase-2 step (+ {gibbs} Langevin steps on {b} negatives)"),
            ms,
            "ms",
        );
    }
    // ∇V as samplers and Langevin negatives evaluate it: the host field, one block per thread
    // on the CPU; on a GPU backend one block, so the device sees the whole batch at once
    let field = model.host_field()?;
    let dim = model.dim();
    let block = rows_per_block(field.as_ref(), a.batch);
    let mut r = stream(3, Purpose::Eval, 0);
    let x = Toy::StandardNormal.sample(a.batch, dim, &mut r).into_vec();
    let ms = time_blocks(a.reps, &x, (dim, dim), block, |x, g, s| {
        field.grad(x, x.len() / dim, g, s)
    });
    print_row(format!("∇V, batch {b}"), ms, "ms");
    let ms = time_blocks(a.reps, &x, (dim, 1), block, |x, e, s| {
        field.energy(x, x.len() / dim, e, s)
    });
    print_row(format!("V alone (forward pass), batch {b}"), ms, "ms");
    let steps = 4;
    let sc = SamplerConfig {
        t_end: steps as f64 * cfg.sample.dt,
        chunk: block,
        ..cfg.sample.clone()
    };
    let src =
        move |r: &mut energy_matching::rng::Rng| Toy::StandardNormal.sample(1, dim, r).into_vec();
    let req = SampleRequest {
        config: &sc,
        schedule: cfg.schedule,
        source: &src,
        n: a.batch,
        seed: 0,
        first_index: 0,
    };
    let drift = Drift::new(field.as_ref());
    let ms = time_ms(a.reps, || {
        std::hint::black_box(sample(&drift, &req, &|_, _, _, _| {}).expect("samples"));
    }) / steps as f64;
    print_row(
        format!("sampler step ({:?}), batch {b}", cfg.sample.kind),
        ms,
        "ms",
    );
    let full = cfg.sample.steps();
    print_row(
        format!("  = images/s at T = {} ({full} steps)", cfg.sample.t_end),
        a.batch as f64 / (ms * full as f64) * 1e3,
        "images/s",
    );
    Ok(())
}

/// Median milliseconds of `f(rows, out, scratch)` over the rows of `x` (`dim` values each,
/// `out_dim` outputs each) in blocks of `block` rows, the blocks in parallel.
fn time_blocks(
    reps: usize,
    x: &[f32],
    (dim, out_dim): (usize, usize),
    block: usize,
    f: impl Fn(&[f32], &mut [f32], &mut Scratch) + Sync,
) -> f64 {
    let mut out = vec![0.0f32; x.len() / dim * out_dim];
    time_ms(reps, || {
        out.par_chunks_mut(block * out_dim)
            .zip(x.par_chunks(block * dim))
            .for_each(|(o, x)| f(x, o, &mut Scratch::default()));
        std::hint::black_box(&out);
    })
}

/// The toy tutorial: exact OT, MLP training steps, the fused sampler kernel.
fn toy_rows(a: &BenchArgs) -> Result<()> {
    for n in [128usize, 256, 1024] {
        let mut r = stream(1, Purpose::Eval, n as u64);
        let x0 = Toy::StandardNormal.sample(n, 2, &mut r);
        let x1 = Toy::TwoMoons.sample(n, 2, &mut r);
        let cost = sq_euclidean_cost(&x0, &x1);
        let reps = if n >= 1024 { a.reps.min(5) } else { a.reps };
        let ms = time_ms(reps, || {
            std::hint::black_box(assignment::solve(&cost, n));
        });
        print_row(format!("exact OT assignment, n = {n} (f32)"), ms, "ms");
    }

    let cfg = RunConfig::default();
    let model = cfg.model.init(0, &compute(), Precision::F32)?;
    let mut trainer = trainer_for(&cfg, Trainer::fresh_state(model.clone(), &cfg.optim))?;
    // steady state, as in a 20k-step run (the first steps also pay for growing the allocator)
    for _ in 0..200 {
        trainer.step().expect("benchmark step");
    }
    let ms = time_ms(a.reps.max(50), || {
        trainer.step().expect("benchmark step");
    });
    print_row("phase-1 step (toy MLP, batch 128, exact OT)", ms, "ms");
    trainer.train.phase1_steps = 0;
    let ms = time_ms(a.phase2_reps.max(1), || {
        trainer.step().expect("benchmark step");
    });
    print_row(
        "phase-2 step (+ 200 Langevin steps on 128 negatives)",
        ms,
        "ms",
    );

    let field = model.host_field()?;
    let drift = Drift::new(field.as_ref());
    for b in [128usize, 1024] {
        let mut r = stream(2, Purpose::Eval, b as u64);
        let x0 = Toy::EightGaussians.sample(b, 2, &mut r).into_vec();
        let kick = vec![0.0f32; x0.len()];
        let mut scratch = Scratch::default();
        let mut x = x0.clone();
        let ms = time_ms(a.reps, || {
            x.copy_from_slice(&x0);
            step(
                &drift,
                &cfg.schedule,
                SamplerKind::EulerMaruyama,
                &mut x,
                b,
                1.5,
                0.01,
                Some(&kick),
                &mut scratch,
            );
            std::hint::black_box(&x);
        });
        print_row(
            format!("sampler Euler–Maruyama step, batch {b} (one thread, fused f32 kernel)"),
            ms,
            "ms",
        );
        print_row(
            format!("  = sampler throughput, batch {b}"),
            b as f64 / ms * 1e3,
            "point-steps/s",
        );
        let xt = from_points(
            &Toy::EightGaussians.sample(b, 2, &mut r),
            &compute(),
            Precision::F32,
        );
        let ms = time_ms(a.reps, || {
            std::hint::black_box(
                energy_matching::backend::to_points(model.grad(xt.clone())).expect("points"),
            );
        });
        print_row(
            format!("∇V on burn tensors (reference path), batch {b}"),
            ms,
            "ms",
        );
    }

    // the sampler as `em sample` runs it: 1,024 points, 100 steps, blocks of 256 in parallel
    let sc = SamplerConfig {
        t_end: 1.0,
        ..cfg.sample.clone()
    };
    let src = |r: &mut energy_matching::rng::Rng| Toy::EightGaussians.sample(1, 2, r).into_vec();
    let req = SampleRequest {
        config: &sc,
        schedule: cfg.schedule,
        source: &src,
        n: 1024,
        seed: 0,
        first_index: 0,
    };
    let ms = time_ms(a.reps.min(5), || {
        std::hint::black_box(sample(&drift, &req, &|_, _, _, _| {}).expect("samples"));
    });
    print_row(
        "sampler throughput, `em sample` (n = 1024, 100 steps, parallel blocks)",
        1024.0 * 100.0 / ms * 1e3,
        "point-steps/s",
    );
    Ok(())
}
