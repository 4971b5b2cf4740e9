"""A pixel's distribution over its byte values, as every frame predictor outputs it (logits
(..., 256)): its negative log-likelihood, and one byte decoded from it.

Below both `models.contract` and `predict`, so neither has to import the other for these.
"""

from __future__ import annotations

import math

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


# Pixels per chunk in `decode_with_entropy` on a CPU: 1024 x 256 float32 logits = 1 MiB, so a
# chunk's passes stay in a core's L2. One batch's logits at once (16 MiB at batch 8 of a 2x32x32
# step) spill to memory on every pass: per pixel, batch 8 then cost more than batch 1.
CHUNK_PIXELS = 1024
_BELOW_ONE = float(torch.nextafter(torch.tensor(1.0), torch.tensor(0.0)))  # x > it <=> x >= 1


def decode_with_entropy(logits: torch.Tensor, decode: str = DEFAULT_DECODE
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(`decode_bytes(logits, decode)`, the entropy in bits, float32 (`metrics.entropy_bits`))
    of logits (..., V) in any float dtype, from one softmax per pixel, a chunk of pixels at a
    time on a CPU. What serving and rollouts compute for every predicted pixel."""
    if decode not in DECODES:
        raise ValueError(f"decode={decode!r} is unknown; accepted: {', '.join(DECODES)}")
    flat = logits.reshape(-1, logits.shape[-1])
    rows = CHUNK_PIXELS if flat.device.type == "cpu" else max(len(flat), 1)
    values = torch.arange(flat.shape[-1], device=flat.device, dtype=torch.float32)
    out = torch.empty(len(flat), dtype=torch.uint8, device=flat.device)
    bits = torch.empty(len(flat), dtype=torch.float32, device=flat.device)
    for start in range(0, len(flat), rows):
        chunk = flat[start:start + rows].to(torch.float32, copy=True)  # never the caller's
        top = chunk.amax(-1, keepdim=True)
        if decode == "argmax":
            out[start:start + rows] = chunk.argmax(-1)
        chunk -= top  # l - max
        e = chunk.exp()  # unnormalised p, at most 1
        z = e.sum(-1)
        # H = log z - sum(p (l - max)), in nats
        bits[start:start + rows] = (z.log() - (e * chunk).sum(-1) / z) / math.log(2.0)
        if decode == "argmax":
            continue
        if decode == "trimmed":  # keep p >= min(max p, TRIM), max p = 1 / z: e / floor >= 1
            e *= 1.0 / (z * TRIM).clamp_(max=1.0)[:, None]
            e = F.threshold(e, _BELOW_ONE, 0.0)  # one fused pass, not a compare and a fill
        out[start:start + rows] = ((e @ values) / e.sum(-1)).round_().to(torch.uint8)
    return out.view(logits.shape[:-1]), bits.view(logits.shape[:-1])


def categorical_nll(logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean"
                    ) -> torch.Tensor:
    """Cross-entropy (nats) of logits (..., V) against integer targets (...), in fp32."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                           reduction=reduction)
