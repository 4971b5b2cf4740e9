"""int8 quantizers and a W8A8 linear layer that multiplies int8 on an integer kernel.

W8A8 as in VQ-ViT (digest section 3): weights int8 per output channel (static), activations int8
per token (dynamic, computed at run time), int32 accumulation with `torch._int_mm`, then one
rescale: y = (x_q @ W_q^T) * s_x * s_w + b. The layer stores int8 weights, not floats: this is
deployment, not fake quantization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QMAX = 127  # symmetric int8 range [-127, 127]: keeps -x representable for every x


def quantize_symmetric(x: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 values and float scales with x ~= q * scale, one scale per slice along `dim`
    (per output channel for a weight (out, in) with dim=-1; per token for activations).
    Rounding error is at most scale / 2 per element."""
    amax = x.detach().abs().amax(dim=dim, keepdim=True).float()
    scale = amax.clamp_min(1e-8) / QMAX
    q = torch.clamp(torch.round(x.float() / scale), -QMAX, QMAX).to(torch.int8)
    return q, scale


def quantize_asymmetric(x: torch.Tensor, dim: int = -1
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int8 values, scales and integer zero points with x ~= (q - zero) * scale over the range
    [min, max] of each slice: for skewed distributions (VQ-ViT's 'int8 asymmetric' precision)."""
    lo = x.detach().amin(dim=dim, keepdim=True).float().clamp_max(0.0)
    hi = x.detach().amax(dim=dim, keepdim=True).float().clamp_min(0.0)
    scale = (hi - lo).clamp_min(1e-8) / 255.0
    zero = torch.round(-128.0 - lo / scale).clamp(-128, 127)
    q = torch.clamp(torch.round(x.float() / scale) + zero, -128, 127).to(torch.int8)
    return q, scale, zero


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None
               ) -> torch.Tensor:
    return ((q.float() - zero) if zero is not None else q.float()) * scale


class Int8Linear(nn.Module):
    """A linear layer holding int8 weights (per output channel) that quantizes its input per
    token at run time and multiplies int8 x int8 -> int32 on `torch._int_mm`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_q", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, linear: nn.Linear) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None)
        q, scale = quantize_symmetric(linear.weight.detach(), dim=1)  # (out, in), (out, 1)
        layer.weight_q.copy_(q)
        layer.weight_scale.copy_(scale.squeeze(1))
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer.to(linear.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)  # (tokens, in)
        xq, xs = quantize_symmetric(x2, dim=1)  # per token: (tokens, in) int8, (tokens, 1)
        if x2.device.type == "cuda" and (x2.shape[0] <= 16 or self.in_features % 8
                                         or self.out_features % 8):
            # The CUDA int8 kernel needs M > 16 and K, N multiples of 8: exact int32 fallback.
            acc = xq.int() @ self.weight_q.t().int()
        else:
            acc = torch._int_mm(xq, self.weight_q.t())  # (tokens, out) int32
        y = acc.float() * xs * self.weight_scale
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight_q.float() * self.weight_scale[:, None]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, W8A8 (int8 x int8 -> int32)"


def reference_w8a8(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """The same arithmetic in float (dequantize then multiply): what Int8Linear must equal."""
    wq, ws = quantize_symmetric(linear.weight.detach(), dim=1)
    xq, xs = quantize_symmetric(x.reshape(-1, linear.in_features), dim=1)
    y = F.linear(dequantize(xq, xs), dequantize(wq, ws), linear.bias)
    return y.reshape(*x.shape[:-1], linear.out_features)
