"""The model step the endpoints run, in plain numpy/torch (no Ray): testable without a cluster.

A frame predictor (`framecast.models.contract.FramePredictor`) predicts `frames_per_step` frames
per forward pass: append that many placeholder frames to the context, run the model, read the
logits of the placeholders. Their logits depend only on earlier frames (the model is causal over
time), so the placeholders' values never matter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from framecast.metrics import entropy_bits


@dataclass(frozen=True)
class Step:
    """One predicted step of one request: frames uint8 and entropy float32 bits, (S, H, W, C)."""

    frames: np.ndarray
    entropy: np.ndarray


@torch.no_grad()
def predict_steps(model: nn.Module, contexts: list[np.ndarray]) -> list[Step]:
    """The next `model.frames_per_step` frames after each context (uint8 (T, H, W, C)).

    Contexts of equal shape share one forward pass (a dynamic batch); other shapes run apart.
    """
    step = model.frames_per_step
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, context in enumerate(contexts):
        groups.setdefault(context.shape, []).append(i)
    out: list[Step | None] = [None] * len(contexts)
    for shape, members in groups.items():
        t, h, w, c = shape
        video = np.zeros((len(members), t + step, h, w, c), dtype=np.uint8)
        for row, i in enumerate(members):
            video[row, :t] = contexts[i]
        logits = model(torch.from_numpy(video))[:, -step:].float()  # (B, step, H, W, C, V)
        frames = model.decode(logits).numpy()
        entropy = entropy_bits(logits).numpy().astype(np.float32)
        for row, i in enumerate(members):
            out[i] = Step(frames[row], entropy[row])
    return out  # type: ignore[return-value]


def context_window(frames: np.ndarray, max_frames: int, step: int) -> np.ndarray:
    """The newest frames a rollout keeps as context: at most `max_frames`, a multiple of `step`
    (the model reads whole time slices)."""
    keep = min(len(frames), max_frames) // step * step
    return frames[len(frames) - keep:]
