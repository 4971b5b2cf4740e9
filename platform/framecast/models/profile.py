"""What a model costs: parameters, size in MB and forward GFLOPs per sequence."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def model_cost(model: nn.Module, frames: int, size: int, channels: int = 1) -> dict[str, float]:
    """Parameters, MB of fp32 weights and forward GFLOPs for one (frames, size, size) sequence,
    counted by torch's FLOP counter (matmuls and convolutions; a multiply-add is 2 FLOPs)."""
    params = sum(p.numel() for p in model.parameters())
    megabytes = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    video = torch.zeros(1, frames, size, size, channels, dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(video)
    return {"params": params, "mb": megabytes, "gflops": counter.get_total_flops() / 1e9}
