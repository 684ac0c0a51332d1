//! End-to-end tests of the `em` binary on tiny configs: run directories, resume, sampling,
//! evaluation, plots, and clear errors for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EM: &str = env!("CARGO_BIN_EXE_em");

/// A small but complete run: both phases, checkpoints every 5 steps.
const TINY: &str = r#"
seed = 3
[model]
hidden = [16, 16]
[train]
batch_size = 16
phase1_steps = 6
phase2_steps = 4
[negatives]
n_gibbs = 5
[sample]
t_end = 0.3
chunk = 8
[eval]
samples = 40
target_points = 60
projections = 10
[log]
every = 2
checkpoint_every = 5
"#;

fn em(args: &[&str]) -> Output {
    Command::new(EM)
        .arg("--quiet")
        .args(args)
        .output()
        .expect("em runs")
}

fn ok(args: &[&str]) -> String {
    let out = em(args);
    assert!(
        out.status.success(),
        "em {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(args: &[&str]) -> String {
    let out = em(args);
    assert!(!out.status.success(), "em {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Trains the config into `run` without drawing plots.
fn train_without_plots(cfg: &Path, run: &Path) {
    ok(&[
        "train",
        "--config",
        s(cfg),
        "--out",
        s(run),
        "--set",
        "log.plots=false",
    ]);
}

fn tensor_bytes(st: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(st).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<u8>)> = t
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, view)| (n, view.data().to_vec()))
        .collect();
    v.sort();
    v
}

#[test]
fn train_writes_a_complete_run_directory_and_resume_is_bit_identical() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), TINY);
    let a = d.path().join("a");
    let out = ok(&["train", "--config", s(&cfg), "--out", s(&a)]);
    assert!(out.contains("energy distance²"), "{out}");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "eval.json",
        "samples.npy",
        "potential.png",
        "boltzmann.png",
        "loss.png",
        "energies.png",
        "energy_hist.png",
        "checkpoints/step-00000005.safetensors",
        "checkpoints/step-00000006.json",
        "checkpoints/final.safetensors",
        "checkpoints/final.json",
    ] {
        assert!(a.join(f).exists(), "missing {f}");
    }
    let rows = std::fs::read_to_string(a.join("metrics.jsonl")).unwrap();
    // logged at steps 1, 2, 4, 6, 8, 10; phase-2 rows carry energy statistics
    assert_eq!(rows.lines().count(), 6, "{rows}");
    assert!(rows.lines().last().unwrap().contains("\"e_neg\":{\"mean\""));
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("eval.json")).unwrap()).unwrap();
    assert!(eval["metrics"]["energy_distance_sq"]
        .as_f64()
        .unwrap()
        .is_finite());
    assert!(eval["grid_nll"].as_f64().unwrap().is_finite());

    // resume from step 5 into another directory: the final state matches bit for bit
    let b = d.path().join("b");
    let ckpt = a.join("checkpoints/step-00000005.safetensors");
    ok(&["train", "--resume", s(&ckpt), "--out", s(&b)]);
    for prefix in ["model.", "adam."] {
        let (x, y) = (
            tensor_bytes(&a.join("checkpoints/final.safetensors"), prefix),
            tensor_bytes(&b.join("checkpoints/final.safetensors"), prefix),
        );
        assert!(!x.is_empty());
        assert_eq!(x, y, "{prefix} tensors differ after resume");
    }
    // and a different seed gives different weights
    let c = d.path().join("c");
    ok(&["train", "--config", s(&cfg), "--out", s(&c), "--seed", "4"]);
    assert_ne!(
        tensor_bytes(&a.join("checkpoints/final.safetensors"), "model."),
        tensor_bytes(&c.join("checkpoints/final.safetensors"), "model.")
    );
}

#[test]
fn sample_eval_and_plot_work_on_a_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), TINY);
    let run = d.path().join("r");
    train_without_plots(&cfg, &run);
    let seven = d.path().join("seven.csv");
    let three = d.path().join("three.csv");
    let traj = d.path().join("traj.csv");
    ok(&[
        "sample",
        "--run",
        s(&run),
        "--n",
        "7",
        "--out",
        s(&seven),
        "--sampler",
        "heun",
        "--trajectories",
        s(&traj),
    ]);
    ok(&[
        "sample",
        "--run",
        s(&run),
        "--n",
        "3",
        "--out",
        s(&three),
        "--sampler",
        "heun",
    ]);
    let rows = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let (r7, r3) = (rows(&seven), rows(&three));
    assert_eq!(r7.len(), 7);
    assert_eq!(&r7[..3], &r3[..], "sample i must not depend on --n");
    assert!(std::fs::read_to_string(&traj)
        .unwrap()
        .starts_with("step,t,i,x0,x1"));
    let json = ok(&[
        "eval",
        "--samples",
        s(&seven),
        "--target",
        "two_moons",
        "--n-target",
        "50",
        "--checkpoint",
        s(&run.join("checkpoints/final")),
    ]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["energy_distance_sq"].as_f64().unwrap() > 0.0);
    assert!(v["grid_nll"].as_f64().unwrap().is_finite());
    ok(&["plot", "--run", s(&run)]);
    assert!(run.join("potential.png").exists() && run.join("loss.png").exists());
}

#[test]
fn divergence_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(
        d.path(),
        &TINY.replace("checkpoint_every = 5", "checkpoint_every = 1"),
    );
    let run = d.path().join("r");
    // Adam moves every weight by ≈ lr per step: with lr = 1e30 the energies overflow at step 2
    let err = fails(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&run),
        "--set",
        "optim.lr=1e30",
    ]);
    assert!(err.contains("diverged at step 2 (phase1)"), "{err}");
    assert!(err.contains("step-00000001.safetensors"), "{err}");
    assert!(run.join("checkpoints/step-00000001.safetensors").exists());
    assert!(!run.join("checkpoints/step-00000002.json").exists());
}

#[test]
fn bad_input_gets_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), TINY);
    let err = fails(&["train", "--config", s(&cfg), "--set", "train.bacth_size=3"]);
    assert!(
        err.contains("train.bacth_size") && err.contains("did you mean `batch_size`"),
        "{err}"
    );
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, "[optim]\nlr = \"high\"\n").unwrap();
    let err = fails(&["train", "--config", s(&bad)]);
    assert!(
        err.contains("config error at `optim.lr`: invalid type: string \"high\", expected f64"),
        "{err}"
    );
    let err = fails(&["train", "--config", "/nonexistent/x.toml"]);
    assert!(err.contains("/nonexistent/x.toml"), "{err}");
    // the OS's reason once, not once per layer of the error chain
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
    let err = fails(&[
        "train",
        "--config",
        s(&cfg),
        "--set",
        "data.target=two_moon",
    ]);
    assert!(err.contains("did you mean `two_moons`"), "{err}");

    // data files: NaN and wrong dimension
    let with_target = |name: &str, text: &str| {
        let f = d.path().join(name);
        std::fs::write(&f, text).unwrap();
        fails(&[
            "train",
            "--config",
            s(&cfg),
            "--set",
            &format!("data.target=\"{}\"", s(&f)),
        ])
    };
    assert!(with_target("nan.csv", "x,y\n1,2\n3,nan\n").contains("row 1, column 1"));
    assert!(with_target("three.csv", "1,2,3\n4,5,6\n").contains("dimension"));

    let run = d.path().join("r");
    train_without_plots(&cfg, &run);
    let out = d.path().join("o.npy");
    assert!(
        fails(&["sample", "--run", s(&run), "--n", "0", "--out", s(&out)])
            .contains("at least 1 sample")
    );
    assert!(fails(&["sample", "--run", s(&run), "--dt", "0", "--out", s(&out)]).contains("dt"));
    assert!(fails(&[
        "sample",
        "--run",
        s(&run),
        "--t-end",
        "-1",
        "--out",
        s(&out)
    ])
    .contains("t_end"));
    assert!(fails(&[
        "sample",
        "--run",
        s(&run),
        "--out",
        s(&d.path().join("o.txt"))
    ])
    .contains(".npy or .csv"));

    // a checkpoint loaded into a model of another shape
    let ck = run.join("checkpoints/final");
    let err = fails(&[
        "train",
        "--resume",
        s(&ck),
        "--out",
        s(&d.path().join("x")),
        "--set",
        "model.hidden=[8, 8]",
    ]);
    assert!(
        err.contains("expected shape [2, 8]") && err.contains("found [2, 16]"),
        "{err}"
    );
    // a corrupt checkpoint
    let st = run.join("checkpoints/final.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    assert!(fails(&["sample", "--checkpoint", s(&ck), "--out", s(&out)]).contains("corrupt"));
    assert!(fails(&[
        "sample",
        "--checkpoint",
        s(&d.path().join("none")),
        "--out",
        s(&out)
    ])
    .contains("none.json"));
}

#[test]
fn help_teaches_the_commands() {
    let out = ok(&["--help"]);
    for c in ["train", "sample", "eval", "plot", "demo", "bench"] {
        assert!(out.contains(c), "{out}");
    }
    assert!(ok(&["train", "--help"]).contains("--resume"));
}

#[test]
fn data_inspects_an_image_dataset_and_writes_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    // five 4×4 grey images, labels 0..5, in the MNIST file layout
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 4];
    images.extend((0..80u32).map(|k| (k * 3 % 256) as u8));
    let mut labels = vec![0, 0, 8, 1, 0, 0, 0, 5];
    labels.extend(0..5u8);
    std::fs::write(dir.path().join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.path().join("train-labels-idx1-ubyte"), labels).unwrap();
    let grid = dir.path().join("grid.png");
    let spec = format!("mnist:{}", s(dir.path()));
    let out = ok(&["data", &spec, "--grid", s(&grid)]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["images"], 5);
    assert_eq!(v["shape"]["height"], 4);
    assert_eq!(v["label_counts"]["3"], 1);
    assert_eq!(&std::fs::read(&grid).unwrap()[1..4], b"PNG");
    let err = fails(&["data", "nonsense"]);
    assert!(err.contains("not an image dataset spec"), "{err}");
    let err = fails(&["data", &format!("cifar10:{}", s(dir.path()))]);
    assert!(err.contains("data_batch_1.bin"), "{err}");
}

/// Writes `n` 6×6 grey images (a bright square at a random-ish position) as MNIST-layout IDX.
fn write_tiny_images(dir: &Path, n: u32) {
    let mut bytes = vec![0, 0, 8, 3];
    for d in [n, 6, 6] {
        bytes.extend(d.to_be_bytes());
    }
    for i in 0..n {
        let (r, c) = ((i * 7 % 4) as usize, (i * 3 % 4) as usize);
        for y in 0..6 {
            for x in 0..6 {
                let on = (r..r + 2).contains(&y) && (c..c + 2).contains(&x);
                bytes.push(if on { 255 } else { 0 });
            }
        }
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), bytes).unwrap();
}

/// A tiny image run on the 6×6 images of [`write_tiny_images`] in `dir`, with the given
/// `[model]` tables.
fn image_run_config(dir: &Path, model: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
seed = 1
{}
[data]
target = "mnist:{}"
source = "standard_normal"
hflip = true
[schedule]
tau_star = 1.0
epsilon_max = 0.1
[train]
batch_size = 8
phase1_steps = 5
phase2_steps = 2
sigma = 0.0
cd_weight = 0.001
cd_clamp = 0.05
[negatives]
n_gibbs = 3
dt = 0.025
time_mode = "linear"
same_temperature_schedule = true
clamp = [-1.0, 1.0]
[sample]
kind = "heun"
t_end = 0.4
dt = 0.05
clamp = [-1.0, 1.0]
[eval]
samples = 12
target_points = 24
projections = 10
[log]
every = 1
checkpoint_every = 4
"#,
            model,
            s(dir)
        ),
    )
}

const CONV_MODEL: &str = r#"
[model]
kind = "conv"
output_scale = 2.0
[model.conv]
image = { channels = 1, height = 6, width = 6 }
channels = [4, 4]
strides = [1, 2]
pool = "flatten"
hidden = [8]
"#;

#[test]
fn an_image_run_trains_a_conv_potential_and_writes_sample_grids() {
    let d = tempfile::tempdir().unwrap();
    write_tiny_images(d.path(), 24);
    let cfg = image_run_config(d.path(), CONV_MODEL);
    let run = d.path().join("run");
    let out = ok(&["train", "--config", s(&cfg), "--out", s(&run)]);
    assert!(out.contains("energy distance²"), "{out}");
    for f in [
        "samples.png",
        "target.png",
        "evolution.png",
        "loss.png",
        "energy_hist.png",
        "samples.npy",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let samples = energy_matching::data::read_points(&run.join("samples.npy")).unwrap();
    assert_eq!((samples.len(), samples.dim()), (12, 36));
    assert!(samples.as_slice().iter().all(|v| (-1.0..=1.0).contains(v)));
    let rows = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(rows.lines().count(), 7);
    assert!(rows.lines().last().unwrap().contains("\"e_neg\":{\"mean\""));
    // the conv checkpoint samples again, and the evolution grid has one column per frame
    let more = d.path().join("more.npy");
    ok(&["sample", "--run", s(&run), "--n", "5", "--out", s(&more)]);
    let again = energy_matching::data::read_points(&more).unwrap();
    assert_eq!((again.len(), again.dim()), (5, 36));
    // `em eval` compares with the whole image set; --fid names the weights it lacks
    let spec = format!("mnist:{}", s(d.path()));
    let json = ok(&["eval", "--samples", s(&more), "--target", &spec]);
    assert!(json.contains("\"n_target\": 24"), "{json}");
    let no_weights = "/nonexistent/inception.safetensors";
    let eval_fid = ["eval", "--samples", s(&more), "--target", &spec, "--fid"];
    let err = fails(&[&eval_fid[..], &["--fid-weights", no_weights]].concat());
    assert!(
        err.contains(no_weights) && err.contains("fetch-inception.sh"),
        "{err}"
    );
    // these images have no labels: the classifier refuses them by name
    let err = fails(&["classifier-train", "--train", &spec, "--test", &spec]);
    assert!(err.contains("labelled"), "{err}");
    // 8 sampling times = 8 panel columns, after training and after `em plot`
    let (_, panel, _) = energy_matching::plot::evolution_panel(energy_matching::data::ImageShape {
        channels: 1,
        height: 6,
        width: 6,
    });
    for redraw in [false, true] {
        if redraw {
            std::fs::remove_file(run.join("evolution.png")).unwrap();
            ok(&["plot", "--run", s(&run)]);
        }
        let evo = image::open(run.join("evolution.png")).unwrap();
        assert_eq!(evo.width() as usize, 4 + 8 * panel, "redrawn: {redraw}");
    }
}

#[test]
fn unet_vit_and_pixel_mlp_potentials_train_on_images() {
    let d = tempfile::tempdir().unwrap();
    write_tiny_images(d.path(), 24);
    let unet_vit = common::TINY_UNET_VIT;
    let mlp = r#"
[model]
kind = "mlp"
dim = 36
image = { channels = 1, height = 6, width = 6 }
hidden = [16, 16]
"#;
    for (name, model) in [("unet_vit", unet_vit), ("mlp", mlp)] {
        let cfg = image_run_config(d.path(), model);
        let run = d.path().join(name);
        let out = ok(&["train", "--config", s(&cfg), "--out", s(&run)]);
        assert!(out.contains("energy distance²"), "{name}: {out}");
        for f in ["samples.png", "evolution.png", "energy_hist.png"] {
            assert!(run.join(f).exists(), "{name}: missing {f}");
        }
        let samples = energy_matching::data::read_points(&run.join("samples.npy")).unwrap();
        assert_eq!((samples.len(), samples.dim()), (12, 36), "{name}");
    }
    // an image shape that disagrees with model.dim is named
    let cfg = image_run_config(d.path(), &mlp.replace("dim = 36", "dim = 30"));
    let err = fails(&[
        "train",
        "--config",
        s(&cfg),
        "--out",
        s(&d.path().join("bad")),
    ]);
    assert!(err.contains("model.image"), "{err}");
    // `em bench --net` times an image network through the real trainer and sampler
    let cfg_ok = image_run_config(d.path(), unet_vit);
    let table = ok(&[
        "bench",
        "--net",
        s(&cfg_ok),
        "--batch",
        "4",
        "--reps",
        "1",
        "--phase2-reps",
        "1",
    ]);
    for row in [
        "phase-1 step",
        "phase-2 step (+ 3 Langevin steps on 4 negatives)",
        "∇V, batch 4",
        "images/s",
    ] {
        assert!(table.contains(row), "missing `{row}` in\n{table}");
    }
    // a GPU backend this build lacks is refused with the cargo feature to enable
    let err = fails(&["--device", "wgpu", "bench", "--net", s(&cfg)]);
    assert!(err.contains("--features wgpu"), "{err}");
}
