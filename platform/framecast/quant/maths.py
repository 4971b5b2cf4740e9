"""The quantizer maths, written once for the deployed int8 layers (`int8`) and the fake-quant
layers of the calibration fine-tune (`learnable`).

Both paths call these helpers on the same floats, so a fine-tuned layer and its deployed form
compute the same integer codes. Each helper takes its rounding function: `torch.round` to deploy,
a straight-through round to train. No in-place ops: autograd needs the inputs, and the deployed
per-token quantizers built from these are compiled (`kernels.fused`), which fuses in-place ops
worse.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

QMAX = 127  # symmetric int8 range [-127, 127]: keeps -x representable for every x
# Ranges are floored at 1e-8 (an all-zero row gets codes 0, not a division by zero), written as a
# literal: the compiler would lift a module-level float into a graph input.

Round = Callable[[torch.Tensor], torch.Tensor]


def symmetric_qmax(bits: int) -> int:
    """Largest symmetric code of `bits`-bit codes: 127 for 8, 63 for a GEMM path taking 7."""
    return 2 ** (bits - 1) - 1


def row_std(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Unbiased std along `dim` (kept), from a sum and a sum of squares: two plain reductions the
    compiler fuses with the quantizer's max into one pass (torch.std or a norm do not fuse so)."""
    n = x.shape[dim]
    s1 = x.sum(dim=dim, keepdim=True)
    s2 = (x * x).sum(dim=dim, keepdim=True)
    return ((s2 - s1 * s1 / n) / max(n - 1, 1)).clamp_min(0.0).sqrt()


def clip_range(x: torch.Tensor, k: torch.Tensor | None = None, dim: int = -1) -> torch.Tensor:
    """Symmetric clipping range along `dim` (kept), max|x| + k * std(x), kept positive: VQ-ViT's
    learned scale is this / qmax, with k = beta for weight rows and delta for tokens (None: plain
    max scaling). Gradients reach k (and x, unless the caller detaches it)."""
    amax = x.abs().amax(dim=dim, keepdim=True).float()
    if k is not None:
        amax = amax + k * row_std(x, dim)
    return amax.clamp_min(1e-8)


def symmetric_codes(x: torch.Tensor, rng: torch.Tensor, qmax: int = QMAX,
                    rnd: Round = torch.round) -> torch.Tensor:
    """Float codes round(x * qmax / rng) clipped to [-qmax, qmax]; x ~= codes * rng / qmax. One
    reciprocal per row, then a multiply per element (cheaper than dividing every element)."""
    return rnd(x * (qmax / rng)).clamp(-qmax, qmax)


def asymmetric_grid(x: torch.Tensor, dim: int = -1, bits: int = 8
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and integer zero points along `dim` (kept) for x ~= (q - zero) * scale over the
    range [min, max] of each slice (widened to hold 0, so 0 is exact), codes in
    [-2^(bits-1), 2^(bits-1) - 1]."""
    low, levels = -(2 ** (bits - 1)), 2 ** bits - 1
    lo = x.amin(dim=dim, keepdim=True).float().clamp_max(0.0)
    hi = x.amax(dim=dim, keepdim=True).float().clamp_min(0.0)
    scale = (hi - lo).clamp_min(1e-8) / levels
    zero = torch.round(low - lo / scale).clamp(low, low + levels)
    return scale, zero


def asymmetric_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int = 8,
                     rnd: Round = torch.round) -> torch.Tensor:
    """Float codes round(x / scale) + zero, clipped to the `bits`-bit range. Computed as
    round(zero + x * (1 / scale)), equal as zero is an integer: one fused multiply-add."""
    low, levels = -(2 ** (bits - 1)), 2 ** bits - 1
    return rnd(torch.addcmul(zero, x, scale.reciprocal())).clamp(low, low + levels)
