"""The pipeline's scale per preset and its one way to run a stage.

Every stage of the pipeline (train, evaluate, generate, quantize; the frame model's and the NBP
generator's alike) goes through `reuse_or_run`: it is reused when a FINISHED run with the same
inputs exists, and its outputs come back from that run's tags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from framecast import tracking
from jobs.quantize import QuantizeJobConfig, quantize
from jobs.train import TrainJobConfig, train

# The models the pipeline makes. The names they are registered under follow from these and the
# data's kind (jobs.train: <model>-<kind>, jobs.quantize: <model>-<kind>-int8).
FRAME_MODEL = "vblt"  # the pipeline demonstrates V-BLT end to end, on every data set
TOKENIZER, GENERATOR = "fsq", "nbp"  # the NBP stage's models
GENERATOR_DATA = "2d"  # the data set the NBP stage trains on

# Scale per preset, every stage's settings in one place.
# demo: 16x16 frames, where 240 CPU steps of the `demo` model beat copy-last-frame on 2D (at
# 32x32, 120 steps did not: benchmarks/RESULTS.md, demo); NBP: a 12x4x4 token grid (fsq small,
# 4x), one frame per block. paper: 12 frames of 64x64, the paper's V-BLT, tokenizer and 700M
# generator (its data set size is not given; 10k is ours). smoke: seconds per stage, to check
# the wiring (tests, a new cluster).
_SMOKE_TRAIN = {"preset": "tiny", "steps": 4, "batch_size": 4, "checkpoint_every": 4,
                "log_every": 2, "eval_sequences": 4}  # every model's, at the smoke scale
_SMOKE_QUANTIZE = {"stage_steps": 1, "final_steps": 1, "batch_size": 4, "eval_sequences": 4,
                   "calib_batches": 1, "latency_repeats": 1, "latency_span_ms": 0}
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "render": {"num_sequences": 24, "frames": 4, "size": 16},
        "train": _SMOKE_TRAIN, "quantize": _SMOKE_QUANTIZE,
        "nbp": {"tokenizer": _SMOKE_TRAIN, "generator": _SMOKE_TRAIN,
                "quantize": _SMOKE_QUANTIZE}},
    "demo": {
        "render": {"num_sequences": 240, "frames": 12, "size": 16},
        "train": {"preset": "demo", "steps": 240, "batch_size": 8, "checkpoint_every": 120,
                  "log_every": 30, "eval_every": 120, "lr": 5e-3},
        "quantize": {"stage_steps": 5, "final_steps": 10},
        "nbp": {"tokenizer": {"preset": "small", "steps": 150, "batch_size": 8, "lr": 2e-3,
                              "log_every": 50, "checkpoint_every": 150},
                "generator": {"preset": "small", "steps": 150, "batch_size": 8, "lr": 2e-3,
                              "log_every": 50, "checkpoint_every": 150,
                              "model_config": "block=1x4x4"},
                "quantize": {"stage_steps": 3, "final_steps": 5, "eval_sequences": 8,
                             "latency_repeats": 3}}},
    "paper": {
        "render": {"num_sequences": 10_000, "frames": 12, "size": 64},
        "train": {"preset": "paper", "steps": 20_000, "batch_size": 16, "checkpoint_every": 1000,
                  "lr": 1e-3},
        "quantize": {"stage_steps": 100, "final_steps": 300, "batch_size": 16},
        "nbp": {"tokenizer": {"preset": "paper", "steps": 5000, "batch_size": 16, "lr": 1e-3,
                              "checkpoint_every": 1000},
                "generator": {"preset": "paper", "steps": 20_000, "batch_size": 16, "lr": 3e-4,
                              "checkpoint_every": 1000},
                "quantize": {"stage_steps": 100, "final_steps": 300, "batch_size": 16}}},
}

# What a rerun needs of a stage's outputs, kept as tags `framecast.out.<output>` of its run.
OUT_TAG = tracking.OUT_TAG_PREFIX
KEPT_OUTPUTS = ("model_uri", "registered", "version")
# Frame-model runs marked before every stage shared OUT_TAG carry these instead ("name:version"
# in one tag); read so a store made then is still reused.
OLD_MODEL_URI_TAG, OLD_REGISTERED_TAG = "framecast.model_uri", "framecast.registered"


def kept_outputs(tags: dict[str, str]) -> dict[str, str]:
    """A marked run's kept outputs, from its tags."""
    kept = {k[len(OUT_TAG):]: v for k, v in tags.items() if k.startswith(OUT_TAG)}
    if OLD_MODEL_URI_TAG in tags:
        kept.setdefault("model_uri", tags[OLD_MODEL_URI_TAG])
    if ":" in tags.get(OLD_REGISTERED_TAG, ""):
        name, version = tags[OLD_REGISTERED_TAG].rsplit(":", 1)
        kept.setdefault("registered", name)
        kept.setdefault("version", version)
    return kept


def reuse_or_run(label: str, key: str, experiment: str, done: dict[str, str],
                 run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The outputs of stage `label` ('run_id', 'metrics' and what it made: 'model_uri',
    'registered', 'version'): those of the newest FINISHED run marked with stage key `key`, else
    `run()`'s, whose run is then marked. `done[label]` says which."""
    from framecast import tracking

    if previous := tracking.finished_stage(key, experiment):
        done[label] = f"reused {previous.info.run_id}"
        print(f"pipeline: {label}: reusing finished run {previous.info.run_id}")
        return {"run_id": previous.info.run_id, "metrics": previous.data.metrics,
                **kept_outputs(previous.data.tags)}
    out = run()
    kept = {k: str(out[k]) for k in KEPT_OUTPUTS if out.get(k)}
    tracking.mark_stage(out["run_id"], key, **{OUT_TAG + k: v for k, v in kept.items()})
    done[label] = out["run_id"]
    return out


def shown(out: dict[str, Any]) -> str:
    """A stage's registered model as the pipeline's report and tables show it."""
    return f"{out['registered']} v{out['version']}"


def config_inputs(config: Any, *ignored: str) -> dict[str, Any]:
    """A job config as a stage's inputs, less the fields that change nothing it makes."""
    from framecast.config import to_dict

    return {k: v for k, v in to_dict(config).items() if k not in ignored}


def train_stage(label: str, config: TrainJobConfig, checksums: dict[str, Any],
                done: dict[str, str], key_name: str = "") -> dict[str, Any]:
    """Train `config` on the data with `checksums` (or reuse the run that did). `key_name`: the
    name the stage's key is taken under, `label` unless given."""
    from framecast import tracking

    key = tracking.stage_key(key_name or label, data=checksums,
                             config=config_inputs(config, "name", "experiment"))
    return reuse_or_run(label, key, config.experiment, done, lambda: train(config))


def quantize_stage(label: str, config: QuantizeJobConfig, checksums: dict[str, Any],
                   done: dict[str, str], key_name: str = "") -> dict[str, Any]:
    """Quantize and register `config.model` (or reuse the run that did); `done[label]` also names
    the registered model, the one a user serves."""
    from framecast import tracking

    key = tracking.stage_key(key_name or label, data=checksums,
                             config=config_inputs(config, "experiment"))
    quantized = reuse_or_run(label, key, config.experiment, done, lambda: quantize(config))
    done[label] += f" -> {shown(quantized)}"
    return quantized


def with_summary_as_metrics(out: dict[str, Any]) -> dict[str, Any]:
    """A scoring job's output (its values under 'summary') shaped as every stage's ('metrics'),
    as a reused run's logged metrics come back."""
    return {**out, "metrics": out["summary"]}
