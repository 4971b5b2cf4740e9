"""A pixel's distribution over its byte values, as every frame predictor outputs it (logits
(..., 256)): its negative log-likelihood, and one byte decoded from it.

Below both `models.contract` and `predict`, so neither has to import the other for these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DECODES = ("trimmed", "mean", "argmax")
DEFAULT_DECODE = DECODES[0]
TRIM = 0.03  # bytes less likely than this are left out of the trimmed mean


def decode_bytes(logits: torch.Tensor, decode: str = DEFAULT_DECODE) -> torch.Tensor:
    """One value per pixel from its distribution over the pixel values (logits (..., V)):

    - 'trimmed' (default): the expected value over the bytes of probability >= 3%, rounded. The
      plain mean minimises squared error under a calibrated distribution, but a young model
      leaves a thin tail over all values, and 1% of mass spread that way moves a black pixel
      by ~1-3 levels: every flat region drifts, and SSIM's luminance term near black punishes
      that hard (benchmarks/RESULTS.md, demo). Trimming keeps the mean's blend of real modes.
    - 'mean': the expected value over all values.
    - 'argmax': the most likely byte.
    """
    if decode == "argmax":
        return logits.argmax(-1).to(torch.uint8)
    if decode not in DECODES:
        raise ValueError(f"decode={decode!r} is unknown; accepted: {', '.join(DECODES)}")
    values = torch.arange(logits.shape[-1], device=logits.device, dtype=torch.float32)
    p = torch.softmax(logits.float(), dim=-1)
    if decode == "trimmed":
        # Never trim everything: the most likely byte always stays.
        floor = p.amax(dim=-1, keepdim=True).clamp(max=TRIM)
        p = torch.where(p >= floor, p, 0.0)
        p = p / p.sum(dim=-1, keepdim=True)
    return (p @ values).round().to(torch.uint8)


def categorical_nll(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
                    ) -> torch.Tensor:
    """Cross-entropy (nats) of logits (..., V) against integer targets (...), in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           reduction=reduction)
