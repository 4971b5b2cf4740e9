"""Learnable quantization scales trained with a straight-through estimator (VQ-ViT).

Weights: per row alpha_i = (max|W_i,:| + beta * std(W_i,:)) / 127 with a learnable beta (one per
layer, starting at 0 = plain max scaling). Activations coming out of a LayerNorm: a dynamic scale
alpha_ln = (max|x| + delta * std(x)) / 127 per token with a learnable delta. Rounding passes the
gradient straight through, so a short calibration fine-tune can move the scales (and weights).
`QATLinear.to_int8()` then freezes the learned weight scales into a real `Int8Linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framecast.quant.int8 import QMAX, Int8Linear


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """clamp(round(x / scale), -127, 127) * scale, differentiable in x and scale (STE)."""
    return torch.clamp(round_ste(x / scale), -QMAX, QMAX) * scale


def weight_scale(weight: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """(out, 1) per-row scales (max|W_i| + beta * std(W_i)) / 127, kept positive."""
    amax = weight.abs().amax(dim=1, keepdim=True)
    std = weight.std(dim=1, keepdim=True)
    return ((amax + beta * std) / QMAX).clamp_min(1e-8)


def token_scale(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(..., 1) per-token scales (max|x| + delta * std(x)) / 127 for LayerNorm outputs."""
    amax = x.detach().abs().amax(dim=-1, keepdim=True)
    std = x.detach().std(dim=-1, keepdim=True)
    return ((amax + delta * std) / QMAX).clamp_min(1e-8)


class QATLinear(nn.Module):
    """A linear layer trained under W8A8 fake quantization with learnable beta and delta."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None \
            else None
        self.beta = nn.Parameter(torch.zeros(()))
        self.delta = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quantize(self.weight, weight_scale(self.weight, self.beta))
        xq = fake_quantize(x, token_scale(x, self.delta))
        return F.linear(xq, w, self.bias)

    def scale_penalty(self) -> torch.Tensor:
        """||alpha||_2 of the weight scales: VQ-ViT's lambda_1 term keeps scales from growing."""
        return weight_scale(self.weight, self.beta).norm()

    @torch.no_grad()
    def to_int8(self) -> Int8Linear:
        """A deployable Int8Linear with the learned weight scales. (Its activations use plain
        per-token max scaling, as Int8Linear always does.)"""
        scale = weight_scale(self.weight, self.beta)  # (out, 1)
        layer = Int8Linear(self.weight.shape[1], self.weight.shape[0], self.bias is not None)
        layer.weight_q.copy_(torch.clamp(torch.round(self.weight / scale), -QMAX, QMAX)
                             .to(torch.int8))
        layer.weight_scale.copy_(scale.squeeze(1))
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        return layer.to(self.weight.device)
