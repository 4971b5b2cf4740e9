"""Inside a tune trial (a Ray Tune actor): the job's own entry point into a child MLflow run of
the study, its reports to Tune, and the extras a trial adds (cost, generation)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from framecast.config import from_dict, project_home
from framecast.heap import keep_freed_memory
from framecast.tune_space import StudySpec
from jobs.quantize import QuantizeJobConfig
from jobs.train import TrainJobConfig
from jobs.tune_study import GENERATION_METRICS, RESULT_TAG, STUDY_TAG, TRIAL_TAG, Study

DRIVER_CPU = 0.1  # what a training trial's own process reserves; its Ray Train workers the rest


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of a study shares, handed to it by `tune.with_parameters` (the sampled
    values alone make the trial's config)."""

    name: str
    spec: StudySpec
    parent_run_id: str
    experiment: str
    home: str  # the driver's FRAMECAST_HOME and MLflow store: Tune moves a trial into its own
    tracking_uri: str  # folder, where the default store would differ
    train_storage: str
    threads: int  # torch threads of a trial (the CPUs shared by the trials side by side)

    @classmethod
    def of(cls, study: Study, parent_run_id: str, threads: int) -> TrialSettings:
        return cls(study.name, study.spec, parent_run_id, study.experiment, str(project_home()),
                   os.environ.get("MLFLOW_TRACKING_URI", ""),
                   str(study.storage / f"{study.name}.trials"), threads)


class CarryForwardReport(TuneReportCallback):
    """Tune's report callback for Ray Train, each result carrying the latest value of every
    metric so far: val metrics arrive every eval_every steps only, and ASHA compares the
    study's metric at the steps it checks."""

    def __init__(self, constant: dict[str, float] | None = None) -> None:
        super().__init__()
        self._latest: dict[str, Any] = dict(constant or {})  # e.g. the model's cost

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]],
                     checkpoint: Any) -> None:
        self._latest.update(metrics[0])
        super().after_report(run_context, [dict(self._latest), *metrics[1:]], checkpoint)


def _enter_trial(study: TrialSettings) -> str:
    """This trial's key; the trial's process sees the driver's MLflow store."""
    os.environ["FRAMECAST_HOME"] = study.home
    if study.tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = study.tracking_uri
    return f"{study.name}/{tune.get_context().get_trial_id()}"


def _earlier_result(experiment: str, key: str) -> tuple[str | None, dict | None]:
    """(the trial's child run, if any; its final report if that run finished): a study killed
    after a trial finished, before Tune saved that, does not train the trial again."""
    import mlflow

    from framecast import tracking

    run_id = tracking.find_run(experiment, TRIAL_TAG, key)
    if run_id is None:
        return None, None
    run = mlflow.MlflowClient().get_run(run_id)
    done = run.info.status == "FINISHED" and RESULT_TAG in run.data.tags
    return run_id, json.loads(run.data.tags[RESULT_TAG]) if done else None


def _child_tags(study: TrialSettings, key: str) -> dict[str, str]:
    return {"mlflow.parentRunId": study.parent_run_id, TRIAL_TAG: key,
            STUDY_TAG + "_member": study.name}


def _trial_params(sampled: dict) -> dict[str, str]:
    return {f"tune.{k}": str(v) for k, v in sampled.items()}


def train_trial(config: dict[str, Any], study: TrialSettings) -> None:
    """One training trial: jobs.train's plan / fit / finish into a child run of the study,
    every logged step reported to Tune, then the trial's extras (cost or generation).
    `config["p"]`: the sampled values."""
    import mlflow

    from jobs import train as train_job

    key = _enter_trial(study)
    run_id, done = _earlier_result(study.experiment, key)
    if done is not None:
        tune.report({**done, "reused": 1.0})
        return
    spec = study.spec
    flags = spec.trial_flags(config["p"])
    workers = int(flags.get("workers", 1))
    flags.update(name=key.replace("/", "-"), storage=study.train_storage, register="none",
                 experiment=study.experiment,
                 cpus_per_worker=round((spec.trial_cpus - DRIVER_CPU) / workers, 3))
    checked = train_job.plan(from_dict(TrainJobConfig, flags))
    # The one model of the trial: the plan's own, profiled now, the trained weights loaded into
    # it by finish, a token generator's warm-up after training.
    model = checked.build().eval()
    cost = cost_metrics(model, checked.manifest.config.frame_shape)  # a trial ASHA stops has it
    with train_job.train_run(checked, run_name=key, run_id=run_id,
                             params={**checked.params, **_trial_params(config["p"])},
                             tags=_child_tags(study, key)) as run:
        mlflow.log_metrics(cost)
        result = train_job.fit_and_finish(checked, run.info.run_id, follow=False,
                                          callbacks=[CarryForwardReport(cost)],
                                          threads=study.threads, model=model)
        extras = {**cost, **trained_cost(checked, result["model_uri"]),
                  **generation_metrics(model, checked, result["model_uri"], study.experiment)}
        mlflow.log_metrics(extras, step=result["step"])
        final = {**result["metrics"], **extras, "step": float(result["step"])}
        mlflow.set_tag(RESULT_TAG, json.dumps(final))
    tune.report(final)


def cost_metrics(model: Any, frame_shape: tuple[int, ...]) -> dict[str, float]:
    """Parameters; for a frame predictor also MB and forward GFLOPs per sequence (torch's
    counter) of the untrained model, for data of `frame_shape` (T, H, W, C)."""
    from framecast.models.contract import FramePredictor
    from framecast.models.profile import model_cost

    out = {"params": float(sum(p.numel() for p in model.parameters()))}
    if isinstance(model, FramePredictor):
        t, h, _, c = frame_shape
        cost = model_cost(model, t, h, c)  # the renderer's frames are square
        out.update(mb=float(cost["mb"]), gflops=float(cost["gflops"]))
    return out


def trained_cost(checked: Any, model_uri: str, sequences: int = 4) -> dict[str, float]:
    """A frame predictor's forward GFLOPs per sequence as trained, counted on `sequences` val
    clips: the compute of a model that spends it by content (V-BLT's dynamic patching) is known
    only once it has learned where the content is; {} for other models."""
    from framecast import data as fdata
    from framecast.model_io import load_logged_model
    from framecast.models.contract import FramePredictor
    from framecast.models.profile import model_cost

    model, _ = load_logged_model(model_uri)
    if not isinstance(model, FramePredictor):
        return {}
    val = fdata.load_numpy(checked.config.data, "val")[0][:sequences]
    t, h, w, c = val.shape[1:]
    return {"gflops": float(model_cost(model, t, h, c, w, videos=val)["gflops"])}


def generation_metrics(model: Any, checked: Any, model_uri: str, experiment: str
                       ) -> dict[str, float]:
    """A token generator's greedy continuations of test clips through jobs.generate (frames
    per second with its tokenizer, forward steps, PSNR/SSIM against the truth), after an
    untimed warm-up on `model` (any instance of it) so one-off costs of the process are not
    counted; {} for other models."""
    import torch

    from framecast import data as fdata
    from framecast.models.contract import TokenGenerator
    from jobs.generate import GenerateConfig, generate_job

    if not isinstance(model, TokenGenerator):
        return {}
    t, h, w, c = checked.manifest.config.frame_shape
    k = model.min_context_frames((t, h, w, c))
    clip = fdata.load_numpy(checked.config.data, "test")[0][:1, :k]
    with torch.no_grad():
        model.generate(torch.from_numpy(clip), t - k, temperature=0.0)  # warm-up
    summary = generate_job(GenerateConfig(model=model_uri, data=checked.config.data,
                                          cond_frames=k, clips=8,
                                          experiment=experiment))["summary"]
    out = {name: float(summary[name]) for name in GENERATION_METRICS[2:] if name in summary}
    out.update(gen_fps=float(summary["frames_per_s"]),
               forward_steps=float(summary["forward_steps"]))
    return out


def quantize_trial(config: dict[str, Any], study: TrialSettings) -> None:
    """One quantization trial: jobs.quantize.quantize (its run nested in the trial's child
    run, which gets the trial's params and final metrics). `config["p"]`: the sampled
    values."""
    import mlflow
    import torch

    from framecast import tracking
    from jobs.quantize import quantize

    key = _enter_trial(study)
    run_id, done = _earlier_result(study.experiment, key)
    if done is not None:
        tune.report({**done, "reused": 1.0})
        return
    flags = {**study.spec.trial_flags(config["p"]), "register": "none",
             "experiment": study.experiment}
    job = from_dict(QuantizeJobConfig, flags)
    torch.set_num_threads(study.threads)
    keep_freed_memory()
    with tracking.job_run("quantize-trial", experiment=study.experiment, run_name=key,
                          run_id=run_id, params={**_trial_params(config["p"]),
                                                 **{k: str(v) for k, v in flags.items()}},
                          tags=_child_tags(study, key)):
        result = quantize(job)
        # The report's text values (the compute forms chosen) are tags of the quantize run.
        values = {k: float(v) for k, v in result["metrics"].items() if not isinstance(v, str)}
        mlflow.log_metrics(values)
        for i, row in enumerate(result["history"]):
            mlflow.log_metric("stage_psnr_drop_db", row["psnr_drop_db"], step=i)
        final = {**values, "step": 1.0}
        mlflow.set_tag(RESULT_TAG, json.dumps(final))
    tune.report(final)


TRIALS = {"train": train_trial, "quantize": quantize_trial}
