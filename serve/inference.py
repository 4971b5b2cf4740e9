"""The model calls the endpoints run, in plain numpy/torch (no Ray): testable without a cluster.

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

from framecast.predict import window_length


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
        logits = model.next_step_logits(torch.from_numpy(video))  # (B, step, H, W, C, V)
        frames, entropy = (x.numpy() for x in model.decode_with_entropy(logits))
        for row, i in enumerate(members):
            out[i] = Step(frames[row], entropy[row])
    return out  # type: ignore[return-value]


def context_window(frames: np.ndarray, max_frames: int, step: int) -> np.ndarray:
    """The newest frames a rollout keeps as context: at most `max_frames`, a multiple of `step`
    (the model reads whole time slices)."""
    return frames[len(frames) - window_length(len(frames), max_frames, step):]


@dataclass(frozen=True)
class GenerationRequest:
    """One /generate request as the replica's batcher sees it."""

    frames: np.ndarray  # uint8 (T, H, W, C) context
    future_frames: int
    temperature: float = 1.0
    top_k: int = 0  # 0: all tokens
    seed: int = 0


@torch.no_grad()
def generate_batch(model: nn.Module, requests: list[GenerationRequest]) -> list[np.ndarray]:
    """uint8 (future_frames, H, W, C) for each request. Requests with the same context length
    and future share one `generate` call (a dynamic batch) whatever their sampling settings:
    each row is sampled with its own temperature, top-k and seed, so its frames are those it
    would get alone."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        groups.setdefault((r.frames.shape, r.future_frames), []).append(i)
    out: list[np.ndarray | None] = [None] * len(requests)
    for (_, future), members in groups.items():
        rows = [requests[i] for i in members]
        context = torch.from_numpy(np.stack([r.frames for r in rows]))
        frames = model.generate(context, future, temperature=[r.temperature for r in rows],
                                top_k=[r.top_k for r in rows], seed=[r.seed for r in rows])
        for row, i in enumerate(members):
            out[i] = frames[row].numpy()
    return out  # type: ignore[return-value]
