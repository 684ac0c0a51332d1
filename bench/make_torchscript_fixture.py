"""Writes tests/fixtures/tiny_module.pt: a small TorchScript archive in the layout of the FID
Inception (a module with an int stride, an int-list padding built by TorchScript's
build_intlist, a sub-module Sequential, and a tensor that is a strided view of a larger
storage). Run with bench/.venv/bin/python; the test reads it without Python."""
import torch
from typing import List


class Layer(torch.nn.Module):
    def __init__(self, stride: int, padding: List[int]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2))
        base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
        self.beta = torch.nn.Parameter(base.t()[1])  # strided view: offset 1, stride 4
        self.stride = stride
        self.padding = padding

    def forward(self, x):
        return torch.conv2d(x, self.weight, None, [self.stride, self.stride], self.padding)


class Root(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tower = torch.nn.Sequential()
        self.tower.add_module("pool", torch.nn.AvgPool2d(3, 1, 1))
        self.tower.add_module("conv", Layer(2, [1, 0]))
        self.head = Layer(1, [0, 3])

    def forward(self, x):
        return self.tower(x)


torch.jit.save(torch.jit.script(Root()), "tests/fixtures/tiny_module.pt")
