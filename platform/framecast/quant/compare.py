"""Float vs quantized, side by side on the same inputs: size, latency and quality."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framecast import metrics
from framecast.quant.apply import state_bytes


@torch.inference_mode()
def latency_ms(model: nn.Module, video: torch.Tensor, repeats: int = 5, warmup: int = 1
               ) -> float:
    """Median wall time (ms) of one forward pass on `video` (B, T, H, W, C)."""
    model.eval()
    for _ in range(warmup):
        model(video)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(video)
        if video.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def speedups(fp32: nn.Module, quant: nn.Module, videos: np.ndarray, batch_sizes: tuple[int, ...],
             repeats: int = 5) -> dict[str, float]:
    """Latency of both models per batch size, measured alternately so drift hits both alike."""
    out = {}
    device = next(fp32.parameters()).device
    for b in batch_sizes:
        idx = np.arange(b) % len(videos)
        video = torch.from_numpy(np.ascontiguousarray(videos[idx])).to(device)
        first = latency_ms(fp32, video, repeats)
        second = latency_ms(quant, video, repeats)
        out[f"latency_ms_fp32_b{b}"] = (first + latency_ms(fp32, video, repeats)) / 2
        out[f"latency_ms_quant_b{b}"] = (second + latency_ms(quant, video, repeats)) / 2
        out[f"speedup_b{b}"] = out[f"latency_ms_fp32_b{b}"] / out[f"latency_ms_quant_b{b}"]
    return out


def compression(fp32: nn.Module, quant: nn.Module) -> dict[str, float]:
    size_fp32, size_quant = state_bytes(fp32), state_bytes(quant)
    return {"bytes_fp32": float(size_fp32), "bytes_quant": float(size_quant),
            "size_ratio": size_fp32 / size_quant}


@torch.inference_mode()
def quality(fp32: nn.Module, quant: nn.Module, videos: np.ndarray, batch_size: int = 8
            ) -> dict[str, float]:
    """MSE/PSNR/SSIM and cross-entropy (nats per pixel value, against the true frames) of two
    frame predictors, their differences, and KL(fp32 || quantized): how far the quantized
    distributions moved."""
    k = fp32.context_frames
    device = next(fp32.parameters()).device
    preds = {"fp32": [], "quant": []}
    ce = {"fp32": 0.0, "quant": 0.0}
    kl, count = 0.0, 0
    for start in range(0, len(videos), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(videos[start:start + batch_size])).to(device)
        target = batch[:, k:].long().reshape(-1)
        logp = {}
        for name, model in (("fp32", fp32), ("quant", quant)):
            logits = model(batch).float()
            preds[name].append(model.decode(logits).cpu().numpy())
            logp[name] = torch.log_softmax(logits.flatten(0, -2), dim=-1)
            ce[name] += F.nll_loss(logp[name], target, reduction="sum").item()
        kl += F.kl_div(logp["quant"], logp["fp32"], log_target=True, reduction="sum").item()
        count += target.numel()
    truth = videos[:, k:]
    out: dict[str, float] = {}
    for name in ("fp32", "quant"):
        summary = metrics.summary(metrics.frame_metrics(np.concatenate(preds[name]), truth))
        out.update({f"{m}_{name}": v for m, v in summary.items()})
        out[f"cross_entropy_{name}"] = ce[name] / count
    out["psnr_drop_db"] = out["psnr_fp32"] - out["psnr_quant"]
    out["ssim_drop"] = out["ssim_fp32"] - out["ssim_quant"]
    out["mse_increase"] = out["mse_quant"] - out["mse_fp32"]
    out["cross_entropy_increase"] = out["cross_entropy_quant"] - out["cross_entropy_fp32"]
    out["kl_fp32_quant"] = kl / count
    return out
