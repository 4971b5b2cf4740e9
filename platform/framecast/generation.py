"""Continue clips with a token generator and time it: one code path for `jobs.generate`, the
generator's `quality` (quantization's fall-back), the quantization report and the benchmarks."""

from __future__ import annotations

import time

import numpy as np
import torch


def continue_clips(model, videos: np.ndarray, context_frames: int, *, temperature: float = 0.0,
                   top_k: int = 0, seed: int = 0, batch_size: int = 8
                   ) -> tuple[np.ndarray, float]:
    """uint8 videos (N, T, H, W, C): the first `context_frames` frames of each continued to T
    frames by `model.generate` -> (generated (N, T - context_frames, H, W, C), seconds spent in
    `generate`, tokenizer included). Clip `i` is sampled with its own seed `seed + i`, so its
    frames do not depend on the batch it lands in."""
    future = videos.shape[1] - context_frames
    if not 1 <= context_frames < videos.shape[1]:
        raise ValueError(f"context_frames={context_frames} must be in 1..{videos.shape[1] - 1}")
    device = next(model.parameters()).device
    outputs, seconds = [], 0.0
    for start in range(0, len(videos), batch_size):
        context = torch.from_numpy(np.ascontiguousarray(
            videos[start:start + batch_size, :context_frames])).to(device)
        begin = time.perf_counter()
        seeds = [seed + start + row for row in range(len(context))]
        frames = model.generate(context, future, temperature=temperature, top_k=top_k,
                                seed=seeds)
        seconds += time.perf_counter() - begin
        outputs.append(frames.cpu().numpy())
    return np.concatenate(outputs), seconds
