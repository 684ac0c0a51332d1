"""PyTorch twin of energy-matching's UNet -> ViT potential (src/potential/unet_vit.rs).

Same layers, same parameter names and order; the ViT head uses PyTorch's own
nn.TransformerEncoderLayer (post-norm, GELU, dropout 0), so the fixture also checks that our
attention / LayerNorm / feed-forward rules mean what PyTorch means by them.

  python bench/torch_unet_vit.py fixture tests/fixtures/unet_vit_tiny.safetensors
      float64 weights, inputs, V and grad V of a tiny network (read by a Rust test)
  python bench/torch_unet_vit.py bench --net mnist|cifar10|mnist_conv --batch B --threads T [--reps R] [--device cuda]
      median ms of a phase-1 step (forward, create_graph input gradient, flow loss, backward,
      Adam), a phase-2 step (+ Langevin negatives and the contrastive term), one grad V
      evaluation and one stochastic Heun sampler step, as `em bench --net` times them.
      `mnist_conv` is configs/mnist_conv.toml's conv-encoder potential (ConvEncoder below).
"""

import argparse
import json
import math
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MNIST = dict(gibbs=75, gibbs_dt=0.025, eps=0.1, image=(1, 28, 28), base=32, mult=[1, 2, 2], res_blocks=2, attn=[14],
             head_channels=64, groups=32, patch=4, embed=128, layers=2, heads=2, ff_mult=4,
             scale=100.0, clamp=None)
CIFAR10 = dict(gibbs=200, gibbs_dt=0.01, eps=0.01, image=(3, 32, 32), base=128, mult=[1, 2, 2, 2], res_blocks=2, attn=[16],
               head_channels=64, groups=32, patch=4, embed=384, layers=8, heads=4, ff_mult=4,
               scale=1000.0, clamp=None)
TINY = dict(image=(2, 4, 4), base=2, mult=[1, 2], res_blocks=1, attn=[2], head_channels=2,
            groups=2, patch=2, embed=4, layers=1, heads=2, ff_mult=2, scale=1.3, clamp=2.5)
MNIST_CONV = dict(gibbs=75, gibbs_dt=0.025, eps=0.1, image=(1, 28, 28), channels=[32, 64, 64],
                  strides=[1, 2, 2], hidden=[512], scale=100.0)


class ConvEncoder(nn.Module):
    """src/potential/conv.rs with pool = "flatten": SiLU convs (3x3, padding 1), the last map
    flattened, SiLU dense layers, a linear head times the output scale."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg["image"]
        convs = []
        for co, st in zip(cfg["channels"], cfg["strides"]):
            convs.append(nn.Conv2d(c, co, 3, stride=st, padding=1))
            c, h, w = co, (h - 1) // st + 1, (w - 1) // st + 1
        self.convs = nn.ModuleList(convs)
        dims = [c * h * w] + cfg["hidden"] + [1]
        self.dense = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.order = [k for k, _ in self.named_parameters()]
        self.shapes = {k: list(p.shape) for k, p in self.named_parameters()}

    def p(self, name):
        return dict(self.named_parameters())[name]

    def sync_encoder(self):
        pass

    def forward(self, x):
        h = x
        for conv in self.convs:
            h = F.silu(conv(h))
        u = h.flatten(1)
        for lin in self.dense[:-1]:
            u = F.silu(lin(u))
        return self.dense[-1](u).squeeze(-1) * self.cfg["scale"]


class Twin(nn.Module):
    """Parameters in a dict keyed by the Rust names; `plan` mirrors `Plan::build`."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.shapes = {}
        self.order = []
        c_img, h_img, _ = cfg["image"]
        base, g = cfg["base"], cfg["groups"]

        def add(name, shape):
            self.order.append(name)
            self.shapes[name] = shape

        def conv(name, ci, co, k, stride=1):
            add(f"{name}.weight", [co, ci, k, k])
            add(f"{name}.bias", [co])
            return ("conv", name, stride, 0 if k == stride else k // 2)

        def norm(name, c):
            add(f"{name}.weight", [c])
            add(f"{name}.bias", [c])
            return name

        def lin(name, di, do):
            add(f"{name}.weight", [di, do])
            add(f"{name}.bias", [do])
            return name

        def attention(name, d, heads):
            return dict(q=lin(f"{name}.q", d, d), k=lin(f"{name}.k", d, d),
                        v=lin(f"{name}.v", d, d), out=lin(f"{name}.out", d, d), heads=heads)

        def res(name, ci, co):
            return ("res", dict(norm1=norm(f"{name}.norm1", ci), conv1=conv(f"{name}.conv1", ci, co, 3),
                                norm2=norm(f"{name}.norm2", co), conv2=conv(f"{name}.conv2", co, co, 3),
                                skip=conv(f"{name}.skip", ci, co, 1) if ci != co else None))

        def attn(name, c):
            return ("attn", norm(f"{name}.norm", c), attention(name, c, max(c // cfg["head_channels"], 1)))

        self.input_conv = conv("unet.input", c_img, base, 3)
        skips, ch, ds = [base], base, 1
        self.encoder = []
        levels = len(cfg["mult"])
        for level, mult in enumerate(cfg["mult"]):
            for i in range(cfg["res_blocks"]):
                name = f"unet.down.{level}.{i}"
                stage = [res(f"{name}.res", ch, mult * base)]
                ch = mult * base
                if h_img // ds in cfg["attn"]:
                    stage.append(attn(f"{name}.attn", ch))
                self.encoder.append(stage)
                skips.append(ch)
            if level + 1 < levels:
                self.encoder.append([("down", conv(f"unet.down.{level}.downsample", ch, ch, 3, 2))])
                skips.append(ch)
                ds *= 2
        self.middle = [res("unet.middle.res1", ch, ch), attn("unet.middle.attn", ch),
                       res("unet.middle.res2", ch, ch)]
        self.decoder = []
        for level in reversed(range(levels)):
            mult = cfg["mult"][level]
            for i in range(cfg["res_blocks"] + 1):
                name = f"unet.up.{level}.{i}"
                skip = skips.pop()
                stage = [res(f"{name}.res", ch + skip, mult * base)]
                ch = mult * base
                if h_img // ds in cfg["attn"]:
                    stage.append(attn(f"{name}.attn", ch))
                if level > 0 and i == cfg["res_blocks"]:
                    stage.append(("up", conv(f"{name}.upsample", ch, ch, 3)))
                    ds //= 2
                self.decoder.append(stage)
        self.out_norm = norm("unet.out.norm", ch)
        self.out_conv = conv("unet.out.conv", ch, c_img, 3)
        e, p = cfg["embed"], cfg["patch"]
        self.patch_embed = conv("vit.patch_embed", c_img, e, p, p)
        tokens = (cfg["image"][1] // p) * (cfg["image"][2] // p)
        add("vit.pos_embed", [tokens, e])
        self.vit_names = []
        for layer in range(cfg["layers"]):
            name = f"vit.layers.{layer}"
            self.vit_names.append(dict(attn=attention(f"{name}.attn", e, cfg["heads"]),
                                       norm1=norm(f"{name}.norm1", e), ff1=lin(f"{name}.ff1", e, cfg["ff_mult"] * e),
                                       ff2=lin(f"{name}.ff2", cfg["ff_mult"] * e, e), norm2=norm(f"{name}.norm2", e)))
        self.energy = lin("vit.energy", e, 1)
        self.params = nn.ParameterDict({k.replace(".", "/"): nn.Parameter(torch.zeros(self.shapes[k]))
                                        for k in self.order})
        self.encoder_layers = nn.ModuleList(
            nn.TransformerEncoderLayer(e, cfg["heads"], cfg["ff_mult"] * e, dropout=0.0,
                                       activation="gelu", batch_first=True)
            for _ in range(cfg["layers"]))

    def p(self, name):
        return self.params[name.replace(".", "/")]

    def load(self, values):
        """Sets every parameter from a dict of arrays keyed by the Rust names."""
        with torch.no_grad():
            for k in self.order:
                self.p(k).copy_(torch.as_tensor(values[k]).reshape(self.shapes[k]))
            self.sync_encoder()

    def sync_encoder(self):
        """Copies the named ViT weights into the nn.TransformerEncoderLayer modules."""
        with torch.no_grad():
            for names, mod in zip(self.vit_names, self.encoder_layers):
                a = names["attn"]
                mod.self_attn.in_proj_weight.copy_(torch.cat([self.p(f"{a[x]}.weight").T for x in "qkv"]))
                mod.self_attn.in_proj_bias.copy_(torch.cat([self.p(f"{a[x]}.bias") for x in "qkv"]))
                mod.self_attn.out_proj.weight.copy_(self.p(f"{a['out']}.weight").T)
                mod.self_attn.out_proj.bias.copy_(self.p(f"{a['out']}.bias"))
                mod.linear1.weight.copy_(self.p(f"{names['ff1']}.weight").T)
                mod.linear1.bias.copy_(self.p(f"{names['ff1']}.bias"))
                mod.linear2.weight.copy_(self.p(f"{names['ff2']}.weight").T)
                mod.linear2.bias.copy_(self.p(f"{names['ff2']}.bias"))
                for n in ("norm1", "norm2"):
                    getattr(mod, n).weight.copy_(self.p(f"{names[n]}.weight"))
                    getattr(mod, n).bias.copy_(self.p(f"{names[n]}.bias"))

    def conv(self, x, c):
        _, name, stride, pad = c
        return F.conv2d(x, self.p(f"{name}.weight"), self.p(f"{name}.bias"), stride=stride, padding=pad)

    def gn(self, x, name):
        return F.group_norm(x, self.cfg["groups"], self.p(f"{name}.weight"), self.p(f"{name}.bias"), 1e-5)

    def lin(self, x, name):
        return x @ self.p(f"{name}.weight") + self.p(f"{name}.bias")

    def mha(self, x, a):
        b, n, c = x.shape
        h = a["heads"]
        d = c // h
        q, k, v = (self.lin(x, a[z]).reshape(b, n, h, d).transpose(1, 2) for z in "qkv")
        w = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(d), dim=-1)
        return self.lin((w @ v).transpose(1, 2).reshape(b, n, c), a["out"])

    def block(self, x, blk):
        kind = blk[0]
        if kind == "res":
            r = blk[1]
            h = self.conv(F.silu(self.gn(x, r["norm1"])), r["conv1"])
            h = self.conv(F.silu(self.gn(h, r["norm2"])), r["conv2"])
            return (self.conv(x, r["skip"]) if r["skip"] else x) + h
        if kind == "attn":
            b, c, hh, ww = x.shape
            y = self.gn(x, blk[1]).reshape(b, c, hh * ww).transpose(1, 2)
            return x + self.mha(y, blk[2]).transpose(1, 2).reshape(b, c, hh, ww)
        if kind == "down":
            return self.conv(x, blk[1])
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"), blk[1])

    def forward(self, x):
        """Per-image energies V(x) for images [B, C, H, W]."""
        h = self.conv(x, self.input_conv)
        skips = [h]
        for stage in self.encoder:
            for blk in stage:
                h = self.block(h, blk)
            skips.append(h)
        for blk in self.middle:
            h = self.block(h, blk)
        for stage in self.decoder:
            h = torch.cat([h, skips.pop()], dim=1)
            for blk in stage:
                h = self.block(h, blk)
        u = self.conv(F.silu(self.gn(h, self.out_norm)), self.out_conv)
        t = self.conv(u, self.patch_embed).flatten(2).transpose(1, 2) + self.p("vit.pos_embed")
        for mod in self.encoder_layers:
            t = mod(t)
        out = self.lin(t, self.energy).squeeze(-1) * self.cfg["scale"]
        if self.cfg["clamp"] is not None:
            out = self.cfg["clamp"] * torch.tanh(out / self.cfg["clamp"])
        return out.sum(dim=1)


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for k, v in tensors.items():
        a = np.ascontiguousarray(v, dtype=np.float64)
        header[k] = dict(dtype="F64", shape=list(a.shape), data_offsets=[offset, offset + a.nbytes])
        offset += a.nbytes
        blobs.append(a.tobytes())
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def fixture(path):
    torch.manual_seed(0)
    torch.set_default_dtype(torch.float64)
    net = Twin(TINY)
    values = {k: 0.6 * torch.randn(net.shapes[k]) for k in net.order}
    net.load(values)
    x = torch.randn(3, *TINY["image"], requires_grad=True)
    v = net(x)
    (g,) = torch.autograd.grad(v.sum(), x)
    out = {f"param.{k}": t.numpy() for k, t in values.items()}
    out.update({"x": x.detach().reshape(3, -1).numpy(), "v": v.detach().numpy(),
                "grad": g.reshape(3, -1).numpy()})
    write_safetensors(path, out)
    print(f"wrote {path}: {len(net.order)} parameters, V = {v.detach().numpy()}")


def median_ms(reps, f, sync=lambda: None):
    """Median wall-clock ms of `reps` calls after one warm-up; `sync` waits for queued device
    work (torch.cuda.synchronize on a GPU), so each time covers the call's whole work."""
    f()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        sync()
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def bench(args):
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    cfg = dict({"mnist": MNIST, "cifar10": CIFAR10, "mnist_conv": MNIST_CONV}[args.net])
    net = ConvEncoder(cfg) if args.net == "mnist_conv" else Twin(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for k in net.order:
            net.p(k).copy_(0.05 * torch.randn(net.shapes[k], generator=gen))
            if k.endswith("norm1.weight") or k.endswith("norm2.weight") or k.endswith("norm.weight"):
                net.p(k).fill_(1.0)
        net.sync_encoder()
    net.to(dev)
    params = [p for k, p in net.named_parameters()]
    opt = torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.95))
    b = args.batch
    x0 = torch.randn(b, *cfg["image"], generator=gen).to(dev)
    x1 = torch.randn(b, *cfg["image"], generator=gen).clamp(-1, 1).to(dev)
    gen = torch.Generator(device=dev).manual_seed(1)  # draws inside the timed steps

    def phase1():
        t = torch.rand(b, 1, 1, 1, generator=gen, device=dev)
        xt = ((1 - t) * x0 + t * x1).requires_grad_(True)
        (g,) = torch.autograd.grad(net(xt).sum(), xt, create_graph=True)
        loss = ((-g - (x1 - x0)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def grad_v(x=x0):
        xt = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(net(xt).sum(), xt)
        return g

    def phase2():
        # Langevin negatives (detached), then flow loss + λ_cd·(mean V(x+) − mean V(x−))
        x = x0.clone()
        dt, eps = cfg["gibbs_dt"], cfg["eps"]
        for _ in range(cfg["gibbs"]):
            x = x - dt * grad_v(x) + math.sqrt(2 * eps * dt) * torch.randn(x.shape, generator=gen, device=dev)
        x = x.clamp(-1, 1)
        t = torch.rand(b, 1, 1, 1, generator=gen, device=dev)
        xt = ((1 - t) * x0 + t * x1).requires_grad_(True)
        (g,) = torch.autograd.grad(net(xt).sum(), xt, create_graph=True)
        cd = torch.clamp(net(x1).mean() - net(x).mean(), min=-0.05)
        loss = ((-g - (x1 - x0)) ** 2).mean() + 1e-3 * cd
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def heun_step():
        # stochastic Euler–Heun at ε = eps, dt = 0.01
        dt, eps = 0.01, cfg["eps"]
        noise = math.sqrt(2 * eps * dt) * torch.randn(x0.shape, generator=gen, device=dev)
        g1 = grad_v(x0)
        pred = x0 - dt * g1 + noise
        g2 = grad_v(pred)
        return x0 - 0.5 * dt * (g1 + g2) + noise

    n_params = sum(int(np.prod(s)) for s in net.shapes.values())
    # PyTorch's fused CPU attention kernels have no double backward
    # ("derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward is not
    # implemented"), so the create_graph step needs the plain math kernel.
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        p1 = median_ms(args.reps, phase1, sync)
        p2 = median_ms(args.phase2_reps, phase2, sync) if args.phase2_reps > 0 else None
        gv = median_ms(args.reps, grad_v, sync)
        hs = median_ms(args.reps, heun_step, sync)
    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(json.dumps(dict(net=args.net, params=n_params, batch=b, threads=args.threads,
                          device=card, phase1_ms=p1, phase2_ms=p2, grad_ms=gv, heun_step_ms=hs,
                          torch=torch.__version__)))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture")
    f.add_argument("path")
    b = sub.add_parser("bench")
    b.add_argument("--net", choices=["mnist", "cifar10", "mnist_conv"], required=True)
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--reps", type=int, default=5)
    b.add_argument("--phase2-reps", type=int, default=1)
    b.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N for a GPU")
    a = ap.parse_args()
    if a.cmd == "fixture":
        fixture(a.path)
    else:
        bench(a)


if __name__ == "__main__":
    sys.exit(main())
