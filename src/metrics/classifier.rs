//! A small image classifier trained deterministically by the project (an MLP on the pixels,
//! ReLU, softmax cross-entropy, Adam), for a fast MNIST-style sample metric: the Fréchet
//! distance between Gaussians fitted to its penultimate-layer features, and the mean
//! confidence (largest class probability) of its predictions on the samples.

use std::path::Path;

use burn::tensor::{activation, Tensor};
use serde::{Deserialize, Serialize};

use super::frechet::{frechet_distance, GaussianStats};
use crate::backend::{cpu, cpu_autodiff, from_points, matrix, to_f64_vec, vector, Precision};
use crate::data::ImageSet;
use crate::rng::{stream, uniform, Purpose, RngExt};
use crate::tensor_file::RawTensor;
use crate::train::optim::{Adam, OptimConfig};
use crate::{EmError, Points, Result};

/// Architecture and training settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
    /// Widths of the hidden layers (the last one gives the features).
    pub hidden: Vec<usize>,
    /// Passes over the training set.
    pub epochs: usize,
    /// Images per step.
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the initialisation and of the data order.
    pub seed: u64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            hidden: vec![256, 128],
            epochs: 3,
            batch: 128,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// A trained classifier: weights `[in, out]` and biases per layer, flattened.
#[derive(Debug, Clone)]
pub struct Classifier {
    shapes: Vec<(usize, usize)>,
    params: Vec<Tensor<1>>,
}

/// What the classifier says about a set of samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierScore {
    /// Fréchet distance between feature Gaussians of the samples and of the reference.
    pub frechet_distance: f64,
    /// Mean over samples of the largest class probability.
    pub mean_confidence: f64,
    /// Fraction of samples predicted as each class.
    pub class_fractions: Vec<f64>,
}

impl Classifier {
    fn layer(&self, l: usize) -> (Tensor<2>, Tensor<2>) {
        let (i, o) = self.shapes[l];
        (
            self.params[2 * l].clone().reshape([i, o]),
            self.params[2 * l + 1].clone().reshape([1, o]),
        )
    }

    /// (logits, features of the last hidden layer).
    fn forward(&self, x: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
        let n = self.shapes.len();
        let mut h = x;
        for l in 0..n - 1 {
            let (w, b) = self.layer(l);
            h = activation::relu(h.matmul(w) + b);
        }
        let (w, b) = self.layer(n - 1);
        (h.clone().matmul(w) + b, h)
    }

    /// Trains on `set` (which must have labels); `progress(epoch, mean loss)` after each epoch.
    pub fn train(
        set: &ImageSet,
        cfg: &ClassifierConfig,
        progress: &mut dyn FnMut(usize, f64),
    ) -> Result<Self> {
        let labels = set.labels.as_ref().ok_or_else(|| {
            EmError::invalid("classifier training data", "labelled images", "no labels")
        })?;
        let classes = labels.iter().copied().max().unwrap_or(0) as usize + 1;
        let mut sizes = vec![set.shape.numel()];
        sizes.extend(&cfg.hidden);
        sizes.push(classes);
        let shapes: Vec<(usize, usize)> = sizes.windows(2).map(|w| (w[0], w[1])).collect();
        let mut rng = stream(cfg.seed, Purpose::Init, 1);
        let mut params = Vec::new();
        for &(i, o) in &shapes {
            let bound = 1.0 / (i as f64).sqrt();
            for n in [i * o, o] {
                let v = (0..n)
                    .map(|_| (2.0 * uniform(&mut rng) - 1.0) * bound)
                    .collect();
                params.push(vector(v, &cpu(), Precision::F32));
            }
        }
        let mut model = Self { shapes, params };
        let mut adam = Adam::new(&model.params);
        let optim = OptimConfig {
            lr: cfg.lr,
            ..OptimConfig::default()
        };
        let n = set.images.len();
        for epoch in 0..cfg.epochs {
            let mut order: Vec<usize> = (0..n).collect();
            let mut r = stream(cfg.seed, Purpose::Data, 1000 + epoch as u64);
            for i in (1..n).rev() {
                order.swap(i, r.random_range(0..=i));
            }
            let (mut total, mut batches) = (0.0, 0);
            for chunk in order.chunks(cfg.batch.max(1)) {
                total += model.step(set, labels, chunk, classes, &mut adam, &optim);
                batches += 1;
            }
            progress(epoch + 1, total / batches.max(1) as f64);
        }
        Ok(model)
    }

    /// One Adam step on the rows `idx`; returns the batch loss.
    fn step(
        &mut self,
        set: &ImageSet,
        labels: &[u16],
        idx: &[usize],
        classes: usize,
        adam: &mut Adam,
        optim: &OptimConfig,
    ) -> f64 {
        let dev = cpu_autodiff();
        let tracked = Self {
            shapes: self.shapes.clone(),
            params: self
                .params
                .iter()
                .map(|p| p.clone().autodiff().require_grad())
                .collect(),
        };
        let x = from_points(&set.images.select(idx), &dev, Precision::F32);
        let mut onehot = vec![0.0; idx.len() * classes];
        for (r, &i) in idx.iter().enumerate() {
            onehot[r * classes + labels[i] as usize] = 1.0;
        }
        let y = matrix(onehot, idx.len(), classes, &dev, Precision::F32);
        let (logits, _) = tracked.forward(x);
        let loss = (activation::log_softmax(logits, 1) * y).sum() * (-1.0 / idx.len() as f64);
        let value = crate::backend::scalar(loss.clone());
        let grads = loss.backward();
        let g = tracked
            .params
            .iter()
            .map(|p| p.grad(&grads))
            .collect::<Vec<_>>();
        let (new, _) = adam.step(self.params.clone(), g, optim, optim.lr);
        self.params = new;
        value
    }

    /// (class probabilities, features) of images given as rows, in blocks of 1,024.
    pub fn predict(&self, images: &Points) -> Result<(Points, Points)> {
        let (mut probs, mut feats) = (Vec::new(), Vec::new());
        let classes = self.shapes.last().map(|s| s.1).unwrap_or(0);
        let width = self.shapes.last().map(|s| s.0).unwrap_or(0);
        let mut s = 0;
        while s < images.len() {
            let e = (s + 1024).min(images.len());
            let x = from_points(&images.slice_rows(s, e), &cpu(), Precision::F32);
            let (logits, h) = self.forward(x);
            probs.extend(
                to_f64_vec(activation::softmax(logits, 1))
                    .into_iter()
                    .map(|v| v as f32),
            );
            feats.extend(to_f64_vec(h).into_iter().map(|v| v as f32));
            s = e;
        }
        Ok((
            Points::new(images.len(), classes, probs)?,
            Points::new(images.len(), width, feats)?,
        ))
    }

    /// Fraction of `set` classified correctly.
    pub fn accuracy(&self, set: &ImageSet) -> Result<f64> {
        let labels = set.labels.as_ref().ok_or_else(|| {
            EmError::invalid("classifier test data", "labelled images", "no labels")
        })?;
        let (probs, _) = self.predict(&set.images)?;
        let correct = probs
            .rows()
            .zip(labels)
            .filter(|(p, &l)| argmax(p) == l as usize)
            .count();
        Ok(correct as f64 / labels.len().max(1) as f64)
    }

    /// Scores `samples` against `reference` images.
    pub fn score(&self, samples: &Points, reference: &Points) -> Result<ClassifierScore> {
        let (probs, feats) = self.predict(samples)?;
        let (_, ref_feats) = self.predict(reference)?;
        let mut fractions = vec![0.0; probs.dim()];
        for p in probs.rows() {
            fractions[argmax(p)] += 1.0 / probs.len() as f64;
        }
        Ok(ClassifierScore {
            frechet_distance: frechet_distance(
                &GaussianStats::of(&feats)?,
                &GaussianStats::of(&ref_feats)?,
            )?,
            mean_confidence: probs
                .rows()
                .map(|p| p.iter().cloned().fold(0.0f32, f32::max) as f64)
                .sum::<f64>()
                / probs.len().max(1) as f64,
            class_fractions: fractions,
        })
    }

    /// Writes the weights (`layers.{l}.weight` `[in, out]`, `layers.{l}.bias`) as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = Vec::new();
        for (l, &(i, o)) in self.shapes.iter().enumerate() {
            for (k, (name, shape)) in [("weight", vec![i, o]), ("bias", vec![o])]
                .into_iter()
                .enumerate()
            {
                let values: Vec<f32> = to_f64_vec(self.params[2 * l + k].clone())
                    .into_iter()
                    .map(|v| v as f32)
                    .collect();
                tensors.push(RawTensor::f32(format!("layers.{l}.{name}"), shape, &values));
            }
        }
        crate::tensor_file::write(path, &tensors, Default::default())
    }

    /// Reads weights written by [`Classifier::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let file = crate::tensor_file::TensorFile::read(path)?;
        let (mut shapes, mut params) = (Vec::new(), Vec::new());
        while let Ok((ws, w)) = file.f64(&format!("layers.{}.weight", shapes.len())) {
            let (_, b) = file.f64(&format!("layers.{}.bias", shapes.len()))?;
            let [i, o] = ws[..] else {
                return Err(EmError::Parse {
                    path: path.to_path_buf(),
                    reason: format!("expected weights of rank 2, found {ws:?}"),
                });
            };
            shapes.push((i, o));
            params.push(vector(w, &cpu(), Precision::F32));
            params.push(vector(b, &cpu(), Precision::F32));
        }
        if shapes.is_empty() {
            return Err(EmError::Parse {
                path: path.to_path_buf(),
                reason: "expected classifier weights `layers.0.weight`, found none".into(),
            });
        }
        Ok(Self { shapes, params })
    }
}

fn argmax(p: &[f32]) -> usize {
    p.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
            if v > bv {
                (i, v)
            } else {
                (bi, bv)
            }
        })
        .0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::ImageShape;
    use crate::rng::normal;

    /// Three classes of 4×4 images: a bright row 0, 1 or 2 on noise.
    fn toy_set(n: usize, seed: u64) -> ImageSet {
        let mut r = stream(seed, Purpose::Eval, 0);
        let (mut px, mut labels) = (Vec::new(), Vec::new());
        for i in 0..n {
            let c = i % 3;
            for y in 0..4 {
                for _ in 0..4 {
                    let base = if y == c { 0.8 } else { -0.8 };
                    px.push((base + 0.3 * normal(&mut r)) as f32);
                }
            }
            labels.push(c as u16);
        }
        ImageSet {
            shape: ImageShape {
                channels: 1,
                height: 4,
                width: 4,
            },
            images: Points::new(n, 16, px).unwrap(),
            labels: Some(labels),
        }
    }

    #[test]
    fn learns_a_separable_problem_deterministically_and_round_trips() {
        let cfg = ClassifierConfig {
            hidden: vec![16, 8],
            epochs: 4,
            batch: 32,
            lr: 1e-2,
            seed: 3,
        };
        let (train, test) = (toy_set(300, 1), toy_set(90, 2));
        let mut losses = Vec::new();
        let c = Classifier::train(&train, &cfg, &mut |_, l| losses.push(l)).unwrap();
        assert!(losses[3] < losses[0], "{losses:?}");
        assert!(c.accuracy(&test).unwrap() > 0.95);
        // same seed, same weights
        let again = Classifier::train(&train, &cfg, &mut |_, _| {}).unwrap();
        assert_eq!(
            to_f64_vec(c.params[0].clone()),
            to_f64_vec(again.params[0].clone())
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.safetensors");
        c.save(&p).unwrap();
        let loaded = Classifier::load(&p).unwrap();
        assert_eq!(loaded.accuracy(&test).unwrap(), c.accuracy(&test).unwrap());
        // the test set scores close to itself and far from one class only
        let same = c.score(&test.images, &toy_set(90, 4).images).unwrap();
        let rows0: Vec<usize> = (0..90).step_by(3).collect();
        let skewed = c.score(&test.images.select(&rows0), &test.images).unwrap();
        assert!(same.frechet_distance < skewed.frechet_distance);
        assert!((skewed.class_fractions[0] - 1.0).abs() < 1e-9);
        assert!(same.mean_confidence > 0.8);
    }

    #[test]
    fn unlabelled_data_is_refused() {
        let mut set = toy_set(10, 1);
        set.labels = None;
        let err = Classifier::train(&set, &ClassifierConfig::default(), &mut |_, _| {})
            .unwrap_err()
            .to_string();
        assert!(err.contains("labelled"), "{err}");
    }
}
