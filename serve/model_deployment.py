"""One Serve deployment per registered model: loads `name@alias` from the MLflow registry and
answers with `@serve.batch` dynamic batching.

A frame predictor answers /predict and /rollout: concurrent requests of the same context shape
share one forward pass; a rollout's steps go through the same batcher, so rollouts batch with each
other and with plain predictions. A token generator answers /generate: concurrent requests of the
same context length and future share one block-by-block generation, each with its own sampling
settings. Batch size and wait are a `user_config` (`max_batch_size`, `batch_wait_timeout_s`):
`serve deploy` of a config whose deployments' user_config alone changed updates the replicas in
place (new application args, or a `serve.run` from Python, start new replicas);
`max_batch_size: 1` turns batching off. A model
runs in fp32 or, where the CPU computes bf16 natively, in bf16 (`precision`: auto keeps the faster
measured form for each dynamic batch size, `compute_form`; a quantized model keeps its int8
weights either way).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from ray import serve

if TYPE_CHECKING:  # torch is imported by the replicas only, not by the ingress
    from framecast.quant.compute_form import Choice

from framecast.models.nbp import check_sampling
from serve.codec import InputSpec, RequestError, check_count
from serve.inference import (
    GenerationRequest,
    Step,
    context_window,
    generate_batch,
    predict_steps,
)

DEFAULT_BATCH = {"max_batch_size": 8, "batch_wait_timeout_s": 0.01}
# The routes each model family answers; a route's name is also the replica method it calls.
FAMILY_ROUTES = {"frame_predictor": ("predict", "rollout"), "token_generator": ("generate",)}


def wrong_route(name: str, family: str, route: str) -> str | None:
    """Why model `name`, a `family`, does not answer `route`; None when it does. The ingress
    asks before it reads a body; the replica asks again, since the ingress's cached spec may
    predate a redeploy that gave the name to another family."""
    answers = FAMILY_ROUTES.get(family, ())
    if route in answers:
        return None
    return (f"{name} is a {family}: it answers {' and '.join(answers) or 'no route'}, "
            f"not {route}")


def default_max_context(frame_shape: list[int], step: int) -> int:
    """The longest context whose forward pass (context + one step) fits the training length:
    longer inputs would ask the positional encoding for unseen positions."""
    return max(step, (frame_shape[0] - step) // step * step)


@serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5},
                  user_config=DEFAULT_BATCH, max_constructor_retry_count=2)
class ModelReplica:
    """A replica of one registered model, frame predictor or token generator, behind a dynamic
    batcher. Its deployment is named after the model (`build_app`), not after this class."""

    def __init__(self, name: str, alias: str, tracking_uri: str, max_context_frames: int = 0,
                 max_future_frames: int = 32, torch_threads: int = 0,
                 precision: str = "auto",
                 max_batch_size: int = DEFAULT_BATCH["max_batch_size"]) -> None:
        import mlflow
        import torch

        from framecast import heap
        from framecast.heap import keep_freed_memory
        from framecast.model_io import load_logged_model, resolve_version
        from framecast.models.contract import FramePredictor, TokenGenerator
        from framecast.quant import compute_form, kernels

        # Replicas run in other processes, maybe on other nodes: the store is passed explicitly.
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        kept = keep_freed_memory()  # a batch's activations reuse the last batch's pages
        version = resolve_version(name, alias)
        self.model, meta = load_logged_model(f"models:/{name}/{version}")
        if not isinstance(self.model, FramePredictor | TokenGenerator):
            raise ValueError(f"{name} v{version} is a {self.model.family}; Serve answers frame "
                             f"predictors and token generators")
        if "frame_shape" not in meta:
            raise ValueError(f"{name} v{version} does not record the frame_shape it was trained "
                             f"on, so its input size is unknown")
        stored = meta.get("precision", "fp32")
        forms = compute_form.candidates(precision, meta)  # ValueError: bf16 not native here
        t, h, w, c = meta["frame_shape"]
        if isinstance(self.model, TokenGenerator):
            self.spec, workload = self._generator_spec(meta["frame_shape"], max_context_frames,
                                                       max_future_frames)
        else:
            self.spec, workload = self._predictor_spec(meta["frame_shape"], max_context_frames,
                                                       max_future_frames)
        # Timed up to the deployment's own max batch (its user_config arrives only after this).
        self.forms, self.choice = choose_form(self.model, forms, workload, max_batch_size)
        self._workload, self._warmed = workload, max(1, max_batch_size)
        self.model = self.forms[self.choice.chosen]  # a full batch's; `_model_for` picks per batch
        choice = self.choice
        self.stored = stored
        self.frame_shape = (t, h, w, c)
        refs = self.model.component_refs(self.model.cfg)
        self.batching = dict(DEFAULT_BATCH)
        self.meta = {
            "name": name, "alias": alias or "latest", "version": version,
            "family": self.model.family, "architecture": meta["name"],
            # a float model's form, or what a quantized one stores (its compute: below)
            "precision": choice.chosen if stored == "fp32" else stored,
            "compute": choice.chosen,  # at the deployment's max batch size
            "compute_by_batch": {str(b): f for b, f in choice.by_batch.items()},
            "precision_choice": {"asked": precision, "candidates": list(forms),
                                 **choice.record()},
            "config": meta.get("config", {}),
            "components": {attr: {"architecture": part["name"],
                                  "ref": refs.get(attr, "")}
                           for attr, part in meta.get("components", {}).items()},
            "kernels": kernels.choices(),
            # framecast.heap: in force here, and from the process's start (the request thread)
            "heap": {"freed_memory_kept": kept, "from_process_start": heap.TUNABLES in
                     os.environ.get("GLIBC_TUNABLES", "")},
            # each W8A8 layer's form per token class, as chosen at warm-up on this replica
            "layer_forms": compute_form.kept_layer_forms(self.forms.values()),
            "preset": meta.get("preset"), "frame_shape": [t, h, w, c],
            "input": self.spec,  # an InputSpec: pickled to the ingress, JSON only over HTTP
        }

    def _predictor_spec(self, frame_shape: list[int], max_context_frames: int,
                        max_future_frames: int
                        ) -> tuple[InputSpec, Callable[[Any, int], None]]:
        step = self.model.frames_per_step
        _, h, w, c = frame_shape
        most = default_max_context(frame_shape, step)
        if max_context_frames > 0:
            most = max(step, max_context_frames // step * step)

        def workload(model: Any, batch: int) -> None:  # a full-length context
            predict_steps(model, [np.zeros((most, h, w, c), dtype=np.uint8)] * batch)
        return InputSpec(height=h, width=w, channels=c, frames_per_step=step,
                         min_context_frames=step, max_context_frames=most,
                         max_future_frames=max_future_frames), workload

    def _generator_spec(self, frame_shape: list[int], max_context_frames: int,
                        max_future_frames: int
                        ) -> tuple[InputSpec, Callable[[Any, int], None]]:
        """A generator continues clips up to the length it was trained on (its positions end
        there): a context of `least` frames plus whole blocks, leaving a frame to generate."""
        t, h, w, c = frame_shape
        shape = tuple(frame_shape)
        least, step = self.model.min_context_frames(shape), self.model.context_step(shape)
        most = least + (t - 1 - least) // step * step
        if max_context_frames > 0:
            most = max(least, least + (min(max_context_frames, most) - least) // step * step)
        future = min(max_future_frames, t - least)

        def workload(model: Any, batch: int) -> None:  # the longest continuation
            generate_batch(model, [GenerationRequest(
                np.zeros((least, h, w, c), dtype=np.uint8), future, 0.0)] * batch)
        return InputSpec(height=h, width=w, channels=c, frames_per_step=step,
                         min_context_frames=least, max_context_frames=most,
                         max_future_frames=future), workload

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
        if size > self._warmed:  # a live update to larger batches: warm them now, not on requests
            from framecast.quant import compute_form

            for model in self.forms.values():
                compute_form.choose_layer_forms(model, self._workload,
                                                warm_batches(size, above=self._warmed))
            self._warmed = size
            self.meta["layer_forms"] = compute_form.kept_layer_forms(self.forms.values())
        for batcher in (self._step, self._generate):
            batcher.set_max_batch_size(size)
            batcher.set_batch_wait_timeout_s(wait)
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
        form, model = self._model_for(len(contexts))
        steps = predict_steps(model, contexts)
        ms = (time.perf_counter() - start) * 1e3
        return [(s, ms, len(contexts), form) for s in steps]

    @serve.batch(max_batch_size=DEFAULT_BATCH["max_batch_size"],
                 batch_wait_timeout_s=DEFAULT_BATCH["batch_wait_timeout_s"])
    async def _generate(self, requests: list[GenerationRequest]
                        ) -> list[tuple[np.ndarray, float, int, str]]:
        start = time.perf_counter()  # on the event loop, for the reason given in _step
        form, model = self._model_for(len(requests))
        frames = generate_batch(model, requests)
        ms = (time.perf_counter() - start) * 1e3
        return [(f, ms, len(requests), form) for f in frames]

    def _model_for(self, batch: int) -> tuple[str, Any]:
        """The compute form measured fastest for a batch of `batch` and the model in it."""
        form = self.choice.form_for(batch)
        return form, self.forms[form]

    def _answer_meta(self, forms: list[str]) -> dict[str, str]:
        """Which model answered (the ingress's cached spec may be seconds older than a
        redeploy) and in what precision: a float model's compute forms for this request's
        batches (fp32+bf16 where a rollout's steps rode in batches of both), else what a
        quantized model stores."""
        from framecast.quant.compute_form import FORMS

        precision = ("+".join(f for f in FORMS if f in forms) if self.stored == "fp32"
                     else self.meta["precision"])
        return {"version": self.meta["version"], "precision": precision}

    def _check(self, route: str, frames: np.ndarray) -> None:
        """The ingress's checks again, as ValueErrors (its 422 rejected_by_model), for callers
        that reach the replica some other way or with a spec older than this replica."""
        why = wrong_route(self.meta["name"], self.model.family, route)
        if why:
            raise ValueError(why)
        spec = self.spec
        want = (spec.height, spec.width, spec.channels)
        if frames.dtype != np.uint8 or frames.ndim != 4 or tuple(frames.shape[1:]) != want:
            raise ValueError(f"frames {frames.dtype} {frames.shape}: expected uint8 (T, *{want})")
        try:
            check_count(len(frames), spec)
        except RequestError as err:
            raise ValueError(err.message) from None

    async def predict(self, frames: np.ndarray) -> dict[str, Any]:
        """The next `frames_per_step` frames after uint8 (T, H, W, C) context frames."""
        start = time.perf_counter()
        self._check("predict", frames)
        step, ms, batch, form = await self._step(frames)
        return {**self._answer_meta([form]), "frames": step.frames, "entropy": step.entropy,
                "inference_ms": ms, "replica_ms": (time.perf_counter() - start) * 1e3,
                "batch_sizes": [batch]}

    async def rollout(self, frames: np.ndarray, future_frames: int) -> dict[str, Any]:
        """`future_frames` frames, each step's prediction appended to the context of the next
        (the context window keeps the newest `max_context_frames`)."""
        start = time.perf_counter()
        self._check("rollout", frames)
        most = self.spec.max_future_frames
        if not 0 < future_frames <= most:
            raise ValueError(f"future_frames={future_frames}: expected 1..{most}")
        context, preds, ents, ms, batches, forms = frames, [], [], 0.0, [], []
        while sum(len(p) for p in preds) < future_frames:
            window = context_window(context, self.spec.max_context_frames,
                                    self.spec.frames_per_step)
            step, step_ms, batch, form = await self._step(window)
            forms.append(form)
            preds.append(step.frames)
            ents.append(step.entropy)
            ms += step_ms
            batches.append(batch)
            context = np.concatenate([window, step.frames])
        return {**self._answer_meta(forms), "frames": np.concatenate(preds)[:future_frames],
                "entropy": np.concatenate(ents)[:future_frames], "inference_ms": ms,
                "replica_ms": (time.perf_counter() - start) * 1e3, "batch_sizes": batches}

    async def generate(self, frames: np.ndarray, future_frames: int, temperature: float = 1.0,
                       top_k: int = 0, seed: int = 0) -> dict[str, Any]:
        """`future_frames` frames generated after uint8 (T, H, W, C) context frames."""
        start = time.perf_counter()
        self._check("generate", frames)
        most = future_limit(self.spec, self.frame_shape[0], len(frames))
        if not 0 < future_frames <= most:
            raise ValueError(f"future_frames={future_frames}: expected 1..{most}")
        # Checked here, not in the batch: one bad row would fail every request batched with it.
        check_sampling(float(temperature), int(top_k), int(seed))
        out, ms, batch, form = await self._generate(GenerationRequest(
            frames, future_frames, float(temperature), int(top_k), int(seed)))
        steps = self.model.forward_steps((len(frames) + future_frames, *self.frame_shape[1:]),
                                         len(frames))
        return {**self._answer_meta([form]), "frames": out, "forward_steps": steps,
                "inference_ms": ms, "replica_ms": (time.perf_counter() - start) * 1e3,
                "batch_sizes": [batch]}


def future_limit(spec: InputSpec, trained_frames: int, context: int) -> int:
    """The most frames a generator continues `context` frames by: its clips end where its
    training clips ended (later positions were never trained), and at the deployment's cap."""
    return min(spec.max_future_frames, trained_frames - context)


def warm_batches(most: int, above: int = 0) -> list[int]:
    """Every power of two up to `most`, and `most`, over `above`: a batch of any size up to
    `most` then lands in a token class whose W8A8 layer forms are chosen (never measuring
    kernels while requests wait) and in a batch class whose compute form was timed."""
    return sorted(b for b in {*(2 ** i for i in range(most.bit_length())), most} if b > above)


def choose_form(model: Any, forms: tuple[str, ...], workload: Callable[[Any, int], None],
                most: int = DEFAULT_BATCH["max_batch_size"]) -> tuple[dict[str, Any], Choice]:
    """Warm `model` up in each compute form (`forms`, from `compute_form.candidates`) for every
    power-of-two batch up to `most` (the deployment's max batch size), now rather than on
    requests (W8A8 layers compile their quantizer and measure their kernels on first use:
    seconds), time the forms side by side at each of those batch sizes where there are several,
    and keep, per batch size, the fastest (a form can win at batch 1 and lose at a full batch:
    an NBP generator on an AVX-512 bf16 CPU measured so). Returns the forms some batch size
    computes in, and the choice; the others are dropped."""
    from framecast.quant import compute_form

    batches = warm_batches(max(1, most))
    models = compute_form.in_forms(model, forms)
    for candidate in models.values():
        compute_form.choose_layer_forms(candidate, workload, batches)

    def time_ms(candidate: Any, batch: int) -> float:
        start = time.perf_counter()
        workload(candidate, batch)
        return (time.perf_counter() - start) * 1e3
    choice = compute_form.fastest(models, time_ms, batches)
    return {form: models[form] for form in choice.forms()}, choice

