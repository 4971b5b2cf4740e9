"""Learnable quantization scales trained with a straight-through estimator (VQ-ViT).

Weights: per row alpha_i = (max|W_i,:| + beta * std(W_i,:)) / 127 with a learnable beta (one per
layer, starting at 0 = plain max scaling). Activations coming out of a LayerNorm: a dynamic scale
alpha_ln = (max|x| + delta * std(x)) / 127 per token with a learnable delta. Rounding passes the
gradient straight through, so a short calibration fine-tune can move the scales (and weights).
`QATLinear.to_int8()` then freezes the learned weight scales into a real `Int8Linear`.

The same module simulates the plan's other precisions while it trains: int8 asymmetric (range
min..max with a zero point, weights per row and activations per token) and fp16 (weights rounded
to float16); `to_deployed()` turns each into the module that really stores and multiplies it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framecast.quant.int8 import QMAX, HalfLinear, Int8Linear
from framecast.quant.plan import Precision


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """clamp(round(x / scale), -127, 127) * scale, differentiable in x and scale (STE)."""
    return torch.clamp(round_ste(x / scale), -QMAX, QMAX) * scale


def fake_quantize_asymmetric(x: torch.Tensor) -> torch.Tensor:
    """Asymmetric int8 fake quantization per row of the last axis: (clamp(round(x / s) + z) - z) * s
    over each row's [min, max] range; straight-through in x."""
    lo = x.detach().amin(dim=-1, keepdim=True).clamp_max(0.0)
    hi = x.detach().amax(dim=-1, keepdim=True).clamp_min(0.0)
    scale = ((hi - lo) / 255.0).clamp_min(1e-8)
    zero = torch.round(-128.0 - lo / scale)
    q = torch.clamp(round_ste(x / scale) + zero, -128, 127)
    return (q - zero) * scale


def fake_half(x: torch.Tensor) -> torch.Tensor:
    """x rounded to float16 and back, straight-through."""
    return x + (x.half().float() - x).detach()


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
    """A linear layer trained under its planned precision's fake quantization: W8A8 symmetric
    with learnable beta and delta, W8A8 asymmetric, or fp16 weights."""

    def __init__(self, linear: nn.Linear, precision: Precision = Precision.INT8) -> None:
        super().__init__()
        self.precision = Precision(precision)
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None \
            else None
        self.beta = nn.Parameter(torch.zeros((), device=linear.weight.device))
        self.delta = nn.Parameter(torch.zeros((), device=linear.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision is Precision.FP16:
            return F.linear(x, fake_half(self.weight), self.bias)
        if self.precision is Precision.INT8_ASYM:
            return F.linear(fake_quantize_asymmetric(x), fake_quantize_asymmetric(self.weight),
                            self.bias)
        w = fake_quantize(self.weight, weight_scale(self.weight, self.beta))
        xq = fake_quantize(x, token_scale(x, self.delta))
        return F.linear(xq, w, self.bias)

    def scale_penalty(self) -> torch.Tensor:
        """||alpha||_2 of the weight scales: VQ-ViT's lambda_1 term keeps scales from growing."""
        return weight_scale(self.weight, self.beta).norm()

    def as_linear(self) -> nn.Linear:
        """The current float weights as a plain nn.Linear (to re-plan at another precision)."""
        linear = nn.Linear(self.weight.shape[1], self.weight.shape[0], self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(self.weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear.to(self.weight.device)

    @torch.no_grad()
    def to_int8(self) -> Int8Linear:
        """A deployable symmetric Int8Linear with the learned weight scales and activation
        delta."""
        scale = weight_scale(self.weight, self.beta)  # (out, 1)
        layer = Int8Linear(self.weight.shape[1], self.weight.shape[0], self.bias is not None)
        layer.weight_q.copy_(torch.clamp(torch.round(self.weight / scale), -QMAX, QMAX)
                             .to(torch.int8))
        layer.weight_scale.copy_(scale.squeeze(1))
        layer.act_delta.copy_(self.delta.detach())
        if self.bias is not None:
            layer.bias.copy_(self.bias)
        layer.refresh()
        return layer.to(self.weight.device)

    @torch.no_grad()
    def to_deployed(self) -> nn.Module:
        """The module that stores and multiplies this layer's precision for real."""
        if self.precision is Precision.INT8:
            return self.to_int8()
        if self.precision is Precision.INT8_ASYM:
            return Int8Linear.from_float(self.as_linear(), asymmetric=True)
        return HalfLinear.from_float(self.as_linear())
