"""Learnable quantization scales trained with a straight-through estimator (VQ-ViT).

Weights: per row alpha_i = (max|W_i,:| + beta * std(W_i,:)) / 127 with a learnable beta (one per
layer, starting at 0 = plain max scaling). Activations coming out of a LayerNorm: a dynamic scale
alpha_ln = (max|x| + delta * std(x)) / qmax per token with a learnable delta. Rounding passes the
gradient straight through, so a short calibration fine-tune can move the scales (and weights).
`QATLinear.to_int8()` then freezes the learned weight scales into a real `Int8Linear`.

The same module simulates the plan's other precisions while it trains: int8 asymmetric (range
min..max with a zero point, weights per row and activations per token) and fp16 (weights rounded
to float16); `to_deployed()` turns each into the module that really stores and multiplies it.

Scales, zero points and codes come from `maths`, the formulas the deployed layers use, so a
layer's fake-quant output is its deployed output up to float summation order
(tests/test_quant_parity.py), activation code width included (see `QATLinear.activation_bits`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framecast.quant import kernels, maths
from framecast.quant.int8 import HalfLinear, Int8Linear, quantize_symmetric
from framecast.quant.maths import QMAX, symmetric_qmax
from framecast.quant.plan import Precision

_CPU = torch.device("cpu")


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(x: torch.Tensor, rng: torch.Tensor, qmax: int = QMAX) -> torch.Tensor:
    """Symmetric fake quantization over the clipping range `rng` (`maths.clip_range`): the
    deployed codes times the deployed scale rng / qmax, differentiable in x and rng (STE)."""
    return maths.symmetric_codes(x, rng, qmax, round_ste) * (rng / qmax)


def fake_quantize_asymmetric(x: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Asymmetric fake quantization per row of the last axis: (q - zero) * scale with the deployed
    codes q over each row's [min, max] range; straight-through in x."""
    scale, zero = maths.asymmetric_grid(x.detach(), -1, bits)
    return (maths.asymmetric_codes(x, scale, zero, bits, round_ste) - zero) * scale


def fake_half(x: torch.Tensor) -> torch.Tensor:
    """x rounded to float16 and back, straight-through."""
    return x + (x.half().float() - x).detach()


def weight_scale(weight: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """(out, 1) per-row scales (max|W_i| + beta * std(W_i)) / 127, differentiable in W and beta."""
    return maths.clip_range(weight, beta) / QMAX


class QATLinear(nn.Module):
    """A linear layer trained under its planned precision's fake quantization: W8A8 symmetric
    with learnable beta and delta, W8A8 asymmetric, or fp16 weights."""

    def __init__(self, linear: nn.Linear, precision: Precision = Precision.INT8,
                 act_bits: int | None = None) -> None:
        super().__init__()
        self.precision = Precision(precision)
        self.act_bits = act_bits  # None: as the deployed layer will choose (activation_bits)
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone()) if linear.bias is not None \
            else None
        self.beta = nn.Parameter(torch.zeros((), device=linear.weight.device))
        self.delta = nn.Parameter(torch.zeros((), device=linear.weight.device))

    def activation_bits(self, tokens: int) -> int:
        """Width of the activation codes the deployed layer will use on a CPU for `tokens`
        tokens: 7 where the GEMM path chosen for the shape takes 7-bit codes, else 8. The choice
        is measured once per shape class and process (`kernels.gemm_path`), so it matches a
        deployment in this process; `act_bits` fixes it (a CUDA deployment takes 8)."""
        if self.act_bits is not None:
            return self.act_bits
        return kernels.gemm_path(tokens, self.weight.shape[1], self.weight.shape[0],
                                 _CPU).act_bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision is Precision.FP16:
            return F.linear(x, fake_half(self.weight), self.bias)
        x2 = x.reshape(-1, self.weight.shape[1])  # (tokens, in), as the deployed layer sees it
        bits = self.activation_bits(x2.shape[0])
        if self.precision is Precision.INT8_ASYM:
            w = fake_quantize_asymmetric(self.weight)
            xq = fake_quantize_asymmetric(x2, bits)
        else:
            w = fake_quantize(self.weight, maths.clip_range(self.weight, self.beta))
            # Scale from the detached tokens: the gradient reaches delta, and x through the codes.
            xq = fake_quantize(x2, maths.clip_range(x2.detach(), self.delta),
                               symmetric_qmax(bits))
        return F.linear(xq, w, self.bias).reshape(*x.shape[:-1], self.weight.shape[0])

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
        q, scale = quantize_symmetric(self.weight, dim=1, clip=self.beta)  # (out, in), (out, 1)
        layer = Int8Linear(self.weight.shape[1], self.weight.shape[0], self.bias is not None)
        layer.weight_q.copy_(q)
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
