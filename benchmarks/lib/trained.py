"""Shared by the quality benchmarks: render a data set and train V-BLT on it the real way."""

from __future__ import annotations

import time
from pathlib import Path


def render_and_train(kind: str, *, sequences: int, size: int, steps: int, root: Path,
                     preset: str = "small") -> tuple[Path, dict, float]:
    """`jobs.render` then `jobs.train` (1 Ray Train worker); returns (data folder, the train
    job's result, training seconds including Ray Train start-up and the final evaluation)."""
    from jobs.render import RenderJobConfig, render
    from jobs.train import TrainJobConfig, train

    data = render(RenderJobConfig(kind=kind, num_sequences=sequences, frames=12, size=size,
                                  out=str(root / kind), mlflow=False)).out
    start = time.perf_counter()
    trained = train(TrainJobConfig(
        data=str(data), preset=preset, steps=steps, batch_size=8, workers=1,
        checkpoint_every=max(steps // 2, 1), log_every=50, eval_every=steps,
        eval_sequences=8, storage=str(root / "ray"), register="none",
        experiment="framecast-benchmarks"))
    return Path(data), trained, time.perf_counter() - start
