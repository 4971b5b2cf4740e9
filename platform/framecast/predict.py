"""Run a frame predictor (`models.contract.FramePredictor`) over videos: predicted frames,
entropy maps, and metrics against the copy-last-frame baseline."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from framecast import metrics
from framecast.distribution import DECODES, categorical_nll


def _batches_and_logits(model: nn.Module, videos: np.ndarray, batch_size: int,
                        device: torch.device | None = None
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 batch on the CPU, float32 logits (B, T', H, W, C, V)) for each batch of `videos`,
    the model in eval mode (callers run under no_grad)."""
    device = device or next(model.parameters()).device
    model.eval()
    for start in range(0, len(videos), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(videos[start:start + batch_size]))
        yield batch, model(batch.to(device)).float()


@torch.no_grad()
def predict(model: nn.Module, videos: np.ndarray, *, batch_size: int = 8,
            device: torch.device | None = None, decode: str | None = None
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """Decoded byte per pixel (`distribution.decode_bytes`; `decode` None: the model's own), its
    entropy in bits, and the mean cross-entropy (nats) against the true frames.

    videos uint8 (N, T, H, W, C) -> predictions uint8 (N, T', H, W, C), entropy float32 (same
    shape), mean cross-entropy against the true frames; T' = T - model.context_frames.
    """
    k = model.context_frames
    preds, ents, ce_sum, n_bytes = [], [], 0.0, 0
    for batch, logits in _batches_and_logits(model, videos, batch_size, device):
        target = batch[:, k:].to(logits.device).long()
        ce_sum += categorical_nll(logits, target, reduction="sum").item()
        n_bytes += target.numel()
        frames, bits = model.decode_with_entropy(logits, decode)
        preds.append(frames.cpu().numpy())
        ents.append(bits.cpu().numpy())
    return np.concatenate(preds), np.concatenate(ents), ce_sum / max(n_bytes, 1)


def window_length(available: int, max_frames: int, step: int) -> int:
    """How many of the newest `available` frames a model reads as context: at most
    `max_frames`, a multiple of `step` (the model reads whole time slices)."""
    return min(available, max_frames) // step * step


@torch.no_grad()
def rollout(model: nn.Module, videos: np.ndarray, context: int, *, batch_size: int = 8,
            device: torch.device | None = None, decode: str | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
    """The model's own continuation of each video from its first `context` frames: every step
    appends `frames_per_step` placeholder frames to what is known, decodes their logits, and
    feeds the decoded frames back as context for the next step (as the Serve /rollout path
    does); no frame after the context is ever read. The model reads at most T frames (the
    clip length: positions it was trained on), so the context window keeps the newest
    T - frames_per_step known frames, a multiple of frames_per_step.

    videos uint8 (N, T, H, W, C) -> predictions uint8 (N, T - context, H, W, C) and their
    entropy in bits (float32, same shape). A model that predicts several frames per step (a
    4x4x4 V-BLT) predicts some of them more than one frame ahead of its last known frame.
    """
    n, t = videos.shape[:2]
    first, step = model.context_frames, model.frames_per_step
    if not first <= context < t:
        raise ValueError(f"context={context}: expected {first}..{t - 1} for clips of {t} "
                         f"frames (the model needs at least {first})")
    device = device or next(model.parameters()).device
    model.eval()
    preds, ents = [], []
    for start in range(0, n, batch_size):
        known = torch.from_numpy(np.ascontiguousarray(videos[start:start + batch_size, :context]))
        known = known.to(device)  # (B, K, H, W, C), grows by `step` frames per model call
        made, entropy = [], []
        while known.shape[1] < t:
            keep = window_length(known.shape[1], t - step, step)
            window = known[:, known.shape[1] - keep:]
            placeholders = torch.zeros_like(window[:, :1]).expand(-1, step, -1, -1, -1)
            logits = model.next_step_logits(torch.cat([window, placeholders], dim=1))
            frames, bits = model.decode_with_entropy(logits, decode)  # (B, step, H, W, C)
            made.append(frames.cpu())
            entropy.append(bits.cpu())
            known = torch.cat([known, frames.to(known.dtype)], dim=1)
        preds.append(torch.cat(made, dim=1)[:, :t - context].numpy())
        ents.append(torch.cat(entropy, dim=1)[:, :t - context].numpy().astype(np.float32))
    return np.concatenate(preds), np.concatenate(ents)


def evaluate(model: nn.Module, videos: np.ndarray, *, batch_size: int = 8,
             decode: str | None = None
             ) -> dict[str, dict[str, np.ndarray] | float]:
    """Per-frame MSE/PSNR/SSIM of the model and of copy-last-frame on the same frames, plus the
    model's mean cross-entropy and entropy."""
    pred, entropy, ce = predict(model, videos, batch_size=batch_size, decode=decode)
    k = model.context_frames
    truth = videos[:, k:]
    return {
        "model": metrics.frame_metrics(pred, truth),
        "copy_last": metrics.frame_metrics(metrics.copy_last_frame(videos, k), truth),
        "cross_entropy": ce,
        "entropy_bits": float(entropy.mean()),
    }


def flat_summary(result: dict, prefix: str = "val_") -> dict[str, float]:
    """{'val_psnr': .., 'val_psnr_copy_last': .., ...}: metrics averaged over frames."""
    out = {f"{prefix}{k}": v for k, v in metrics.summary(result["model"]).items()}
    out.update({f"{prefix}{k}_copy_last": v
                for k, v in metrics.summary(result["copy_last"]).items()})
    out[f"{prefix}cross_entropy"] = float(result["cross_entropy"])
    out[f"{prefix}entropy_bits"] = float(result["entropy_bits"])
    return out


@torch.no_grad()
def choose_decode(model: nn.Module, videos: np.ndarray, *, batch_size: int = 8,
                  context: int | None = None) -> tuple[str, dict[str, float]]:
    """The decoding with the best mean PSNR on `videos` (the val split), and each one's PSNR:
    teacher-forced (one forward pass per batch, decoded every way), or, with `context`, of
    rollouts from that many frames (`rollout`, once per decoding): a decoding that scores best
    one frame ahead can lose over a rollout, where its frames are fed back (the plain mean's
    blur compounds). A tie goes to the earlier in DECODES."""
    if context is not None:
        psnr = {d: float(metrics.psnr_per_frame(
            rollout(model, videos, context, batch_size=batch_size, decode=d)[0],
            videos[:, context:]).mean()) for d in DECODES}
        return max(DECODES, key=lambda d: (psnr[d], -DECODES.index(d))), psnr
    preds: dict[str, list[np.ndarray]] = {d: [] for d in DECODES}
    for _, logits in _batches_and_logits(model, videos, batch_size):
        for d in DECODES:
            preds[d].append(model.decode(logits, d).cpu().numpy())
    truth = videos[:, model.context_frames:]
    psnr = {d: float(metrics.psnr_per_frame(np.concatenate(p), truth).mean())
            for d, p in preds.items()}
    return max(DECODES, key=lambda d: (psnr[d], -DECODES.index(d))), psnr


def adopt_best_decode(model: nn.Module, videos: np.ndarray, *, batch_size: int = 8,
                      context: int | None = None) -> tuple[str, dict[str, float]]:
    """`choose_decode` on `videos` (the val split), then make the winner the model's own
    decoding (its `cfg.decode`); returns what `choose_decode` returns."""
    best, psnr = choose_decode(model, videos, batch_size=batch_size, context=context)
    model.cfg = dataclasses.replace(model.cfg, decode=best)
    return best, psnr


def describe_decode_choice(best: str, psnr: dict[str, float]) -> str:
    """'decoding chosen on val: mean (trimmed 19.50, mean 19.51, argmax 18.05 dB)'."""
    return (f"decoding chosen on val: {best} ("
            + ", ".join(f"{d} {v:.2f}" for d, v in psnr.items()) + " dB)")
