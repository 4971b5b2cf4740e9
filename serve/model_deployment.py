"""One Serve deployment per registered model: loads `name@alias` from the MLflow registry and
predicts with `@serve.batch` dynamic batching.

Concurrent requests of the same context shape share one forward pass; a rollout's steps go through
the same batcher, so rollouts batch with each other and with plain predictions. Batch size and
wait are a `user_config` (`max_batch_size`, `batch_wait_timeout_s`), changeable without restarting
replicas; `max_batch_size: 1` turns batching off.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from ray import serve

from serve.inference import Step, context_window, predict_steps

DEFAULT_BATCH = {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}


def default_max_context(frame_shape: list[int], step: int) -> int:
    """The longest context whose forward pass (context + one step) fits the training length:
    longer inputs would ask the positional encoding for unseen positions."""
    return max(step, (frame_shape[0] - step) // step * step)


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5},
                  user_config=DEFAULT_BATCH, max_constructor_retry_count=2)
class FrameModel:
    """A registered model of the common interface, behind a dynamic batcher."""

    def __init__(self, name: str, alias: str, tracking_uri: str, max_context_frames: int = 0,
                 max_future_frames: int = 32, torch_threads: int = 0) -> None:
        import mlflow
        import torch

        from framecast.model_io import load_logged_model, resolve_version
        from framecast.models.contract import FramePredictor

        # Replicas run in other processes, maybe on other nodes: the store is passed explicitly.
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        version = resolve_version(name, alias)
        self.model, meta = load_logged_model(f"models:/{name}/{version}")
        if not isinstance(self.model, FramePredictor):
            raise ValueError(f"{name} v{version} is a {self.model.family}; this deployment "
                             f"serves frame predictors")
        if "frame_shape" not in meta:
            raise ValueError(f"{name} v{version} does not record the frame_shape it was trained "
                             f"on, so its input size is unknown")
        step = self.model.frames_per_step
        t, h, w, c = meta["frame_shape"]
        most = default_max_context(meta["frame_shape"], step)
        if max_context_frames > 0:
            most = max(step, max_context_frames // step * step)
        self.step, self.max_context = step, most
        # Warm-up now, not on the first request: W8A8 layers compile their fused quantizer and
        # measure their int8 GEMM paths on first use (seconds), for batch 1 and a full batch.
        for batch in sorted({1, DEFAULT_BATCH["max_batch_size"]}):
            predict_steps(self.model, [np.zeros((most, h, w, c), dtype=np.uint8)] * batch)
        from framecast.quant import kernels
        self.batching = dict(DEFAULT_BATCH)
        self.meta = {
            "name": name, "alias": alias or "latest", "version": version,
            "family": self.model.family, "architecture": meta["name"],
            "precision": meta.get("precision", "fp32"),
            "kernels": kernels.choices(),
            "preset": meta.get("preset"), "frame_shape": [t, h, w, c],
            "input": {"height": h, "width": w, "channels": c, "frames_per_step": step,
                      "max_context_frames": most, "max_future_frames": max_future_frames},
        }

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Serve calls this with the deployment's user_config (also on a live update)."""
        unknown = set(config) - set(DEFAULT_BATCH)
        if unknown:
            raise ValueError(f"unknown user_config key(s) {sorted(unknown)}; "
                             f"accepted: {sorted(DEFAULT_BATCH)}")
        merged = {**DEFAULT_BATCH, **config}
        size, wait = int(merged["max_batch_size"]), float(merged["batch_wait_timeout_s"])
        if size < 1 or wait < 0:
            raise ValueError(f"user_config {config}: max_batch_size must be >= 1 and "
                             f"batch_wait_timeout_s >= 0")
        self._step.set_max_batch_size(size)
        self._step.set_batch_wait_timeout_s(wait)
        self.batching = {"max_batch_size": size, "batch_wait_timeout_s": wait}

    def info(self) -> dict[str, Any]:
        return {**self.meta, "batching": dict(self.batching)}

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"],
                 batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_timeout_s"])
    async def _step(self, contexts: list[np.ndarray]) -> list[tuple[Step, float, int]]:
        start = time.perf_counter()
        # On the event loop, not in a thread: Serve forms the next batch as soon as the loop is
        # free, so a forward pass in a thread would leave each batch with only the requests of
        # the first few milliseconds; blocking here lets the whole wait fill the next batch.
        steps = predict_steps(self.model, contexts)
        ms = (time.perf_counter() - start) * 1e3
        return [(s, ms, len(contexts)) for s in steps]

    def _answer_meta(self) -> dict[str, str]:
        """Which model answered: the ingress's cached spec may be seconds older than a redeploy."""
        return {"version": self.meta["version"], "precision": self.meta["precision"]}

    def _check(self, frames: np.ndarray) -> None:
        spec = self.meta["input"]
        want = (spec["height"], spec["width"], spec["channels"])
        if frames.dtype != np.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != want:
            raise ValueError(f"frames {frames.dtype} {frames.shape}: expected uint8 (T, *{want})")
        if not 0 < len(frames) <= self.max_context or len(frames) % self.step:
            raise ValueError(f"{len(frames)} context frames: expected a positive multiple of "
                             f"{self.step}, at most {self.max_context}")

    async def predict(self, frames: np.ndarray) -> dict[str, Any]:
        """The next `frames_per_step` frames after uint8 (T, H, W, C) context frames."""
        start = time.perf_counter()
        self._check(frames)
        step, ms, batch = await self._step(frames)
        return {**self._answer_meta(), "frames": step.frames, "entropy": step.entropy,
                "inference_ms": ms, "replica_ms": (time.perf_counter() - start) * 1e3,
                "batch_sizes": [batch]}

    async def rollout(self, frames: np.ndarray, future_frames: int) -> dict[str, Any]:
        """`future_frames` frames, each step's prediction appended to the context of the next
        (the context window keeps the newest `max_context_frames`)."""
        start = time.perf_counter()
        self._check(frames)
        most = self.meta["input"]["max_future_frames"]
        if not 0 < future_frames <= most:
            raise ValueError(f"future_frames={future_frames}: expected 1..{most}")
        context, preds, ents, ms, batches = frames, [], [], 0.0, []
        while sum(len(p) for p in preds) < future_frames:
            window = context_window(context, self.max_context, self.step)
            step, step_ms, batch = await self._step(window)
            preds.append(step.frames)
            ents.append(step.entropy)
            ms += step_ms
            batches.append(batch)
            context = np.concatenate([window, step.frames])
        return {**self._answer_meta(), "frames": np.concatenate(preds)[:future_frames],
                "entropy": np.concatenate(ents)[:future_frames], "inference_ms": ms,
                "replica_ms": (time.perf_counter() - start) * 1e3, "batch_sizes": batches}
