"""What a model costs: parameters, size in MB and forward GFLOPs per sequence."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs of one forward pass of `module` on `inputs`, by torch's FLOP counter: matrix
    products, convolutions and attention, a multiply-add counting 2; bias adds, norms and
    activations are not counted (as in the papers' tables)."""
    counter = FlopCounterMode(display=False)
    with counter:
        module(*inputs)
    return int(counter.get_total_flops())


def model_cost(model: nn.Module, frames: int, size: int, channels: int = 1, width: int = 0
               ) -> dict[str, float]:
    """Parameters, MB of fp32 weights and forward GFLOPs for one (frames, size, width or size)
    uint8 sequence, counted by `count_flops`."""
    params = sum(p.numel() for p in model.parameters())
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    video = torch.zeros(1, frames, size, width or size, channels, dtype=torch.uint8)
    gflops = count_flops(model.eval(), video) / 1e9
    return {"params": params, "mb": megabytes, "gflops": gflops}
