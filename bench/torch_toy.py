"""PyTorch timing of the toy-tutorial steps, for side-by-side comparison with `em bench`.

Implements the same computations as the reference tutorial (m1balcerak/EnergyMatching,
experiments/toy2d/utils_2D.py): MLP 2->256 (ReLU) ->3x256 (SiLU) ->1, exact OT pairs drawn
from the POT `emd` plan, flow loss through create_graph, Adam; phase 2 adds 200 Langevin
steps on 64 data-started + 64 source-started chains. Usage:

    bench/.venv/bin/python bench/torch_toy.py --threads 1
"""
import argparse
import math
import time

import numpy as np
import ot
import torch
import torch.nn as nn


def eight_gaussians(n):
    centers = torch.tensor([(math.cos(k * math.pi / 4), math.sin(k * math.pi / 4)) for k in range(8)]) * 5
    idx = torch.randint(0, 8, (n,))
    return centers[idx] + 0.1 ** 0.25 * torch.randn(n, 2)


def two_moons(n):
    n_out, n_in = n // 2, n - n // 2
    a_out, a_in = np.linspace(0, np.pi, n_out), np.linspace(0, np.pi, n_in)
    x = np.vstack([np.append(np.cos(a_out), 1 - np.cos(a_in)), np.append(np.sin(a_out), 1 - np.sin(a_in) - 0.5)]).T
    x += np.random.rand(n, 1) * 0.2
    return torch.tensor(x, dtype=torch.float32) * 3 - 1


def temperature(t, tau, eps_max):
    return torch.where(t >= 1.0, torch.full_like(t, eps_max), torch.where(t < tau, torch.zeros_like(t), eps_max * (t - tau) / (1 - tau)))


def model():
    w = 256
    return nn.Sequential(nn.Linear(2, w), nn.ReLU(), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 1))


def ot_pairs(x0, x1):
    a = np.full(len(x0), 1 / len(x0))
    m = torch.cdist(x0, x1) ** 2
    p = ot.emd(a, a, m.numpy()).flatten()
    p = p / p.sum()
    idx = np.random.choice(p.shape[0], p=p, size=len(x0), replace=True)
    i, j = np.divmod(idx, len(x1))
    return x0[i], x1[j]


def flow_step(net, opt, b=128, sigma=0.1):
    opt.zero_grad()
    x0, x1 = ot_pairs(eight_gaussians(b), two_moons(b))
    t = torch.rand(b, 1)
    xt = (1 - t) * x0 + t * x1 + sigma * torch.randn_like(x0)
    xt.requires_grad_(True)
    g = torch.autograd.grad(net(xt).sum(), xt, create_graph=True)[0]
    return (-g - (x1 - x0)).pow(2), t


def langevin(net, x, t_start, steps=200, dt=0.01, tau=0.8, eps_max=0.15):
    for k in range(steps):
        t = t_start + (1 - t_start) * (k + 1) / steps
        x.requires_grad_(True)
        g = torch.autograd.grad(net(x).sum(), x)[0]
        noise = torch.sqrt(2 * temperature(t, tau, eps_max) * dt).unsqueeze(-1) * torch.randn_like(x)
        x = (x - g * dt + noise).detach()
    return x


def phase2_step(net, opt, b=128, tau=0.8):
    mse, t = flow_step(net, opt, b)
    w = torch.where(t.squeeze() >= 1, 0.0, torch.where(t.squeeze() < tau, 1.0, 1 - (t.squeeze() - tau) / (1 - tau)))
    flow = (w * mse.mean(dim=1)).mean()
    e_pos = net(two_moons(b)).mean()
    h = b // 2
    x_neg = langevin(net, torch.cat([two_moons(h), eight_gaussians(h)]), torch.cat([torch.ones(h), torch.zeros(h)]))
    loss = flow + 2.0 * (e_pos - net(x_neg).mean())
    loss.backward()
    opt.step()


def median_ms(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return sorted(ts)[len(ts) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--phase2-reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    np.random.seed(0)
    rows = []
    for n in (128, 256, 1024):
        x0, x1 = torch.randn(n, 2), two_moons(n)
        m = (torch.cdist(x0, x1) ** 2).numpy()
        u = np.full(n, 1 / n)
        rows.append((f"exact OT (POT emd), n = {n}", median_ms(lambda: ot.emd(u, u, m), a.reps if n < 1024 else 5), "ms"))
    net = model()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)

    def p1():
        mse, _ = flow_step(net, opt)
        mse.mean().backward()
        opt.step()

    for _ in range(200):  # steady state, as in a 20k-step run (em bench does the same)
        p1()
    rows.append(("phase-1 step (toy MLP, batch 128, exact OT)", median_ms(p1, max(a.reps, 50)), "ms"))
    rows.append(("phase-2 step (+ 200 Langevin steps on 128 negatives)", median_ms(lambda: phase2_step(net, opt), a.phase2_reps), "ms"))
    for b in (128, 1024):
        x = eight_gaussians(b)

        def one():
            xx = x.clone().requires_grad_(True)
            g = torch.autograd.grad(net(xx).sum(), xx)[0]
            return (xx - 0.01 * g + 0.05 * torch.randn_like(xx)).detach()

        ms = median_ms(one, a.reps)
        rows.append((f"sampler Euler–Maruyama step, batch {b}", ms, "ms"))
        rows.append((f"  = sampler throughput, batch {b}", b / ms * 1e3, "point-steps/s"))
    print(f"| measurement (PyTorch {torch.__version__}, threads: {a.threads}) | value | unit |")
    print("|---|---:|---|")
    for name, v, unit in rows:
        print(f"| {name} | {v:.3f} | {unit} |")


if __name__ == "__main__":
    main()
