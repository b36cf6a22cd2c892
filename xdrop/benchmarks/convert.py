"""What :func:`xdrop.layers.torch.convert` costs a PyTorch model in eager training:
``python -m xdrop.benchmarks.convert [--quick] [--device cpu|cuda]``.

Two measurements, forward and backward, interleaved (:mod:`xdrop.benchmarks.timing`):

- attention with dropout: torch's ``F.scaled_dot_product_attention(..., dropout_p=0.1)`` against
  the converted model's explicit attention (softmax, xdrop's dropout of the probabilities, then
  ``@ v``), at a few sequence lengths;
- a small transformer layer (attention with dropout, two dropout modules, one ``F.dropout``)
  unconverted against converted: the layers' streams, the functional mode entered around the
  forward, and the hooks that name each running module;
- twenty ``F.dropout`` calls on a small tensor: what each functional site adds.

Each line prints both medians and their ratio (``docs/convert-torch.md`` records a run).
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from xdrop.benchmarks.timing import time_interleaved
from xdrop.layers.torch import convert


class _Attend(nn.Module):
    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, dropout_p=self.rate)


class _Layer(nn.Module):
    """A pre-norm transformer layer written as libraries write it."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = nn.Dropout(0.1)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(0.1), nn.Linear(4 * width, width)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        qkv = self.qkv(self.norm(x)).view(n, length, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        rate = 0.1 if self.training else 0.0
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=rate)
        x = x + self.dropout(self.out(h.transpose(1, 2).reshape(n, length, width)))
        return x + F.dropout(self.mlp(x), 0.1, self.training)


class _Calls(nn.Module):
    """Twenty small ``F.dropout`` calls: the per-call cost of a functional site."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(20):
            x = F.dropout(x, 0.1, self.training)
        return x


def _step(model: nn.Module, *inputs: torch.Tensor) -> Callable[[], object]:
    def call() -> object:
        out = model(*inputs)
        out.sum().backward()
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def _line(label: str, contenders: dict[str, Callable[[], object]], repeats: int) -> str:
    timings, failures = time_interleaved(contenders, repeats=repeats, min_sample=0.05)
    if failures:
        return f"{label}: failed: {failures}"
    (base, base_time), (other, other_time) = ((n, timings[n].median) for n in contenders)
    ratio = other_time / base_time
    return (
        f"{label}: {base} {base_time * 1e3:.3f} ms, {other} {other_time * 1e3:.3f} ms, "
        f"ratio {ratio:.2f}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m xdrop.benchmarks.convert")
    parser.add_argument("--quick", action="store_true", help="one length, fewer repeats")
    parser.add_argument("--device", default="cpu")
    options = parser.parse_args(argv)
    device = torch.device(options.device)
    repeats = 3 if options.quick else 7
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {device}, {threads} threads, forward + backward, medians")
    lengths = (128,) if options.quick else (64, 128, 256, 512)
    for length in lengths:
        shape = (8, 8, length, 64)
        q, k, v = (torch.randn(shape, device=device, requires_grad=True) for _ in range(3))
        contenders = {
            "SDPA": _step(_Attend(0.1), q, k, v),
            "converted": _step(convert(_Attend(0.1), seed=0), q, k, v),
        }
        print(_line(f"attention {shape}, dropout_p=0.1", contenders, repeats))
    torch.manual_seed(0)
    width = 256
    layer = _Layer(width, heads=4).to(device)
    x = torch.randn(8, 128, width, device=device)
    converted = convert(copy.deepcopy(layer), seed=0)
    contenders = {"torch": _step(layer, x), "converted": _step(converted, x)}
    label = f"transformer layer, width {width}, (8, 128) tokens, {math.prod(x.shape)} elements"
    print(_line(label, contenders, repeats))
    small = torch.randn(64, 64, device=device, requires_grad=True)
    contenders = {
        "torch": _step(_Calls(), small),
        "converted": _step(convert(_Calls(), seed=0), small),
    }
    print(_line("20 F.dropout calls on (64, 64)", contenders, repeats))


if __name__ == "__main__":
    main()
