"""The tune job's study, prepared before Ray or MLflow start: the space checked against the job,
the data and the models it can draw, and the metrics a trial reports."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from framecast import tracking
from framecast.config import ConfigError, from_dict, project_home
from framecast.tune_space import StudySpec, check_metrics, check_models, load_study
from jobs.quantize import QuantizeJobConfig, reported_metrics
from jobs.train import TrainJobConfig

if TYPE_CHECKING:
    from jobs.tune import TuneJobConfig

JOB_CONFIGS: dict[str, type] = {"train": TrainJobConfig, "quantize": QuantizeJobConfig}
STUDY_TAG, TRIAL_TAG, RESULT_TAG = (tracking.TUNE_STUDY_TAG, tracking.TUNE_TRIAL_TAG,
                                    tracking.TUNE_RESULT_TAG)
COST_METRICS = ("params", "mb", "gflops")
GENERATION_METRICS = ("gen_fps", "forward_steps", "gen_psnr", "gen_ssim", "gen_mse",
                      "gen_psnr_copy_last", "gen_ssim_copy_last", "gen_mse_copy_last")


@dataclass(frozen=True)
class Study:
    """A checked study, ready to run: no Ray, no MLflow run yet."""

    spec: StudySpec
    name: str
    storage: Path  # Ray Tune keeps the study in storage/name; trials' Ray Train runs beside it
    experiment: str
    metrics: frozenset[str]  # what a trial reports
    steps: int  # a full training trial's steps (0: quantize)
    trials: int  # how many trials the space makes

    @property
    def path(self) -> Path:
        return self.storage / self.name


def trial_count(spec: StudySpec) -> int:
    grid = [len(p.values) for p in spec.params if p.kind == "grid"]
    return spec.num_samples * math.prod(grid)


def prepare(config: TuneJobConfig) -> Study:
    """Load and check the space against the job, the data and the models it can draw; work out
    the metrics a trial reports and refuse a metric outside them. ConfigError: one line."""
    spec = load_study(config.space, JOB_CONFIGS, data=config.data or None)
    first = spec.trial_flags({p.key: p.corners()[0] for p in spec.params})
    steps = 0
    if spec.job == "train":
        base = from_dict(TrainJobConfig, first)
        metrics = _train_metrics(spec, base)
        steps = base.steps
        if spec.scheduler.kind == "asha" and spec.scheduler.max_t > steps:
            raise ConfigError(f"{spec.source}: scheduler.asha.max_t={spec.scheduler.max_t} is "
                              f"more than the trials' steps={steps}")
    else:
        generator = _check_fp32_model(from_dict(QuantizeJobConfig, first))
        metrics = {"step", *reported_metrics(generator)}
    check_metrics(spec, metrics)
    storage = Path(config.storage).resolve() if config.storage else (
        project_home() / "ray_results")
    experiment = str(first.get("experiment", "framecast"))
    return Study(spec, config.name or spec.name, storage, experiment, frozenset(metrics),
                 steps, trial_count(spec))


def _train_metrics(spec: StudySpec, base: TrainJobConfig) -> set[str]:
    """What a training trial of this model reports: the loop's (step, loss, lr and the model's
    loss extras), `val_` + the model's evaluation keys, and the trial's extras, read off the
    model itself (one evaluation of a blank clip) rather than listed per model."""
    import numpy as np
    import torch

    from framecast.models.contract import FramePredictor, TokenGenerator
    from jobs import train as train_job

    checked = train_job.plan(base)  # the data set, the model, its components (a tokenizer)
    frame_shape = tuple(checked.manifest.config.frame_shape)
    check_models(spec, base.model, base.preset, frame_shape, checked.components)
    model = checked.build().eval()
    blank = np.zeros((1, *frame_shape), dtype=np.uint8)
    with torch.no_grad():
        evaluated = model.evaluate(blank, 1)
        _, extra = model.loss(torch.from_numpy(blank))
    names = {"step", "loss", "lr", *extra, *(f"val_{k}" for k in evaluated), "params"}
    if isinstance(model, FramePredictor):
        names |= set(COST_METRICS)
    if isinstance(model, TokenGenerator):
        names |= set(GENERATION_METRICS)
    return names


def _check_fp32_model(config: QuantizeJobConfig) -> bool:
    """The model every quantize trial starts from exists and reads the data; whether it is a
    token generator (its quantize report differs from a frame predictor's)."""
    from framecast import data as fdata
    from framecast import tracking
    from framecast.models.contract import TokenGenerator
    from jobs.common import load_logged_model

    manifest = fdata.read_manifest(config.data)
    tracking.use_experiment(config.experiment)
    model, meta = load_logged_model(config.model)
    if meta.get("quant_plan"):
        raise ConfigError(f"base.model {config.model!r} is already quantized; give the fp32 "
                          "model")
    model.check_data(tuple(manifest.config.frame_shape))
    return isinstance(model, TokenGenerator)
