"""Frame-prediction metrics on the [0, 1] pixel scale, the copy-last-frame baseline, and the
entropy of predicted distributions.

All functions take uint8 videos (N, T, H, W, C) of predicted and true frames and return one value
per predicted frame position, averaged over the N sequences.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

_MIN_MSE = 1e-10  # identical frames: PSNR capped at 100 dB instead of infinity


def _unit(video: np.ndarray) -> np.ndarray:
    if video.dtype != np.uint8:
        raise TypeError(f"expected uint8 video, got {video.dtype}")
    return video.astype(np.float64) / 255.0


def _check(pred: np.ndarray, true: np.ndarray) -> None:
    if pred.shape != true.shape or pred.ndim != 5:
        raise ValueError(f"prediction {pred.shape} and truth {true.shape} must both be "
                         "(N, T, H, W, C)")


def mse_per_frame(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(T,) mean squared error per frame position."""
    _check(pred, true)
    return ((_unit(pred) - _unit(true)) ** 2).mean(axis=(0, 2, 3, 4))


def psnr_per_frame(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(T,) PSNR in dB per frame position: computed per frame, then averaged over sequences."""
    _check(pred, true)
    mse = ((_unit(pred) - _unit(true)) ** 2).mean(axis=(2, 3, 4))  # (N, T)
    return (10.0 * np.log10(1.0 / np.maximum(mse, _MIN_MSE))).mean(axis=0)


def ssim_per_frame(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(T,) SSIM per frame position (scikit-image, data range 1)."""
    _check(pred, true)
    p, t = _unit(pred), _unit(true)
    n, frames, h, w, c = p.shape
    win = min(7, h, w) - (1 - min(7, h, w) % 2)  # odd, at most the frame size
    out = np.empty((n, frames))
    for i in range(n):
        for j in range(frames):
            out[i, j] = structural_similarity(p[i, j], t[i, j], data_range=1.0, channel_axis=-1,
                                              win_size=win)
    return out.mean(axis=0)


def copy_last_frame(video: np.ndarray, context_frames: int) -> np.ndarray:
    """The do-nothing baseline: frame t is predicted as the true frame t - 1, for the frames
    after the first `context_frames`."""
    if not 1 <= context_frames < video.shape[1]:
        raise ValueError(f"context_frames={context_frames} must be in 1..{video.shape[1] - 1}")
    return video[:, context_frames - 1:-1]


def hold_last_frame(video: np.ndarray, context_frames: int) -> np.ndarray:
    """Copy-last-frame under the rollout protocol: the last context frame, held for every frame
    after the first `context_frames` (it never sees a later true frame)."""
    if not 1 <= context_frames < video.shape[1]:
        raise ValueError(f"context_frames={context_frames} must be in 1..{video.shape[1] - 1}")
    last = video[:, context_frames - 1:context_frames]
    return np.repeat(last, video.shape[1] - context_frames, axis=1)


def frame_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, np.ndarray]:
    """{'mse', 'psnr', 'ssim'}: each (T,) per predicted frame position."""
    return {"mse": mse_per_frame(pred, true), "psnr": psnr_per_frame(pred, true),
            "ssim": ssim_per_frame(pred, true)}


def summary(per_frame: dict[str, np.ndarray]) -> dict[str, float]:
    """Average each per-frame metric over the frame positions."""
    return {k: float(np.mean(v)) for k, v in per_frame.items()}


def entropy_bits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy H = -sum p log2 p of softmax(logits) over the last axis, in bits (V-BLT eq. 6)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1) / math.log(2.0)
