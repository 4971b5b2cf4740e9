"""Run a Ray Tune study defined as data: a search space in tune_spaces/*.yaml.

    python -m jobs.tune --space tune_spaces/vblt_patch_sizes.yaml --data data/2d-16
    python -m jobs.tune --space tune_spaces/nbp_block_shapes.yaml --data DIR --name blocks-a
    python -m jobs.tune --space tune_spaces/quant_thresholds.yaml --data DIR     # quantize trials
    ray job submit --working-dir . -- python -m jobs.tune --space tune_spaces/X.yaml \\
        --data /abs/data --storage /abs/ray_results

The space names the job whose entry point every trial calls (`job: train` -> jobs.train's plan /
fit / finish, Ray Train inside the trial; `job: quantize` -> jobs.quantize.quantize), the flags
every trial shares (`base`), the searched flags and model fields (`params`: choice, grid,
uniform, loguniform, randint), the metric and mode that rank trials, more metrics to report, the
number of samples, the scheduler (ASHA stops weak training trials early; fifo) and the CPUs a
trial reserves (trials run side by side when they fit). Everything is checked before Ray
starts: one line names a bad key or value (exit 2). See framecast/tune_space.py for the format.

MLflow: one parent run per study (`--name`, default the space's name) and one child run per
trial (its params, every logged step's metrics, its final metrics; a training trial's child is
its jobs.train run, a quantize trial's child holds the jobs.quantize run). Training trials
report every logged step to Tune (ASHA reads them). Besides a frame predictor's val metrics a
trial reports its cost (params, mb, gflops per sequence); a token generator's trial continues
test clips and reports generation speed and quality (gen_fps with the tokenizer included,
forward_steps, gen_psnr, ...). At the end the parent gets the results table (study/results.md,
study/results.csv), a plot (study/plot.png: `plot: {x, y, color}` in the space, the Pareto front
of `pareto:` ringed) and the best trial's config (study/best_config.yaml), which
`python -m jobs.train --config FILE` (or jobs.quantize) accepts; flags given there win.

Progress: one line per finished trial (its params and metric) and the best so far. Rerunning
with the same --name resumes the study (Ray Tune's state in --storage/NAME): finished trials are
not run again, unfinished ones restart and their Ray Train run continues from its last
checkpoint; a finished study prints its table.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from framecast.config import ConfigError, from_dict, project_home, to_dict
from framecast.tune_space import (
    RESERVED_FLAGS,
    Param,
    StudySpec,
    check_metrics,
    check_models,
    load_study,
)
from jobs.common import run_job
from jobs.quantize import QuantizeJobConfig
from jobs.train import TrainJobConfig, check_storage
from jobs.tune_progress import PROGRESS, StudyProgress, label

JOB_CONFIGS: dict[str, type] = {"train": TrainJobConfig, "quantize": QuantizeJobConfig}
STUDY_TAG = "framecast.tune_study"  # on the parent run: the study's name
TRIAL_TAG = "framecast.tune_trial"  # on a child run: "<study>/<Tune trial id>"
RESULT_TAG = "framecast.tune_result"  # on a finished child run: its final report (JSON)
DRIVER_CPU = 0.1  # what a training trial's own process reserves; its Ray Train workers the rest
COST_METRICS = ("params", "mb", "gflops")
GENERATION_METRICS = ("gen_fps", "forward_steps", "gen_psnr", "gen_ssim", "gen_mse",
                      "gen_psnr_copy_last", "gen_ssim_copy_last", "gen_mse_copy_last")
QUANTIZE_METRICS = (
    "size_ratio", "bytes_fp32", "bytes_quant", "speedup_b1", "speedup_b8", "latency_ms_fp32_b1",
    "latency_ms_quant_b1", "latency_ms_fp32_b8", "latency_ms_quant_b8", "psnr_fp32",
    "psnr_quant", "psnr_drop_db", "ssim_fp32", "ssim_quant", "ssim_drop", "mse_fp32",
    "mse_quant", "mse_increase", "cross_entropy_fp32", "cross_entropy_quant",
    "cross_entropy_increase", "kl_fp32_quant", "accuracy_fp32", "accuracy_quant",
    "token_agreement", "psnr_quant_vs_fp32")


@dataclass(frozen=True)
class TuneJobConfig:
    space: str = field(default="", metadata={
        "help": "the study: a YAML search space, e.g. tune_spaces/vblt_patch_sizes.yaml "
                "(required)"})
    data: str = field(default="", metadata={
        "help": "data set folder from jobs.render; supplies or replaces the space's base.data"})
    name: str = field(default="", metadata={
        "help": "study name (default: the space's `name`); rerun with the same name to resume "
                "it or, when it finished, to print its table"})
    storage: str = field(default="", metadata={
        "help": "folder for Ray Tune's state and the trials' Ray Train checkpoints (default: "
                "$FRAMECAST_HOME/ray_results)"})

    def __post_init__(self) -> None:
        if not self.space:
            raise ConfigError("--space is required: a YAML file such as "
                              "tune_spaces/vblt_patch_sizes.yaml")


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
        _check_fp32_model(from_dict(QuantizeJobConfig, first))
        metrics = {"step", *QUANTIZE_METRICS}
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


def _check_fp32_model(config: QuantizeJobConfig) -> None:
    """The model every quantize trial starts from exists and reads the data."""
    from framecast import data as fdata
    from framecast import tracking
    from jobs.common import load_logged_model

    manifest = fdata.read_manifest(config.data)
    tracking.use_experiment(config.experiment)
    model, meta = load_logged_model(config.model)
    if meta.get("quant_plan"):
        raise ConfigError(f"base.model {config.model!r} is already quantized; give the fp32 "
                          "model")
    model.check_data(tuple(manifest.config.frame_shape))


# -- inside a trial (a Ray Tune actor) --------------------------------------------------------

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


def _enter_trial(params: dict) -> tuple[StudySpec, dict, str]:
    """The study, its settings and this trial's key; the trial's process sees the driver's
    MLflow store (Tune moves a trial into its own folder, where the default would differ)."""
    study = params["study"]
    os.environ["FRAMECAST_HOME"] = study["home"]
    if study["tracking_uri"]:
        os.environ["MLFLOW_TRACKING_URI"] = study["tracking_uri"]
    key = f"{study['name']}/{tune.get_context().get_trial_id()}"
    return StudySpec.from_dict(study["spec"]), study, key


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


def _child_tags(study: dict, key: str) -> dict[str, str]:
    return {"mlflow.parentRunId": study["parent_run_id"], TRIAL_TAG: key,
            STUDY_TAG + "_member": study["name"]}


def _trial_params(sampled: dict) -> dict[str, str]:
    return {f"tune.{k}": str(v) for k, v in sampled.items()}


def train_trial(params: dict) -> None:
    """One training trial: jobs.train's plan / fit / finish into a child run of the study,
    every logged step reported to Tune, then the trial's extras (cost or generation)."""
    import mlflow

    from framecast import tracking
    from jobs import train as train_job

    spec, study, key = _enter_trial(params)
    run_id, done = _earlier_result(study["experiment"], key)
    if done is not None:
        tune.report({**done, "reused": 1.0})
        return
    flags = spec.trial_flags(params["p"])
    workers = int(flags.get("workers", 1))
    flags.update(name=key.replace("/", "-"), storage=study["train_storage"], register="none",
                 experiment=study["experiment"],
                 cpus_per_worker=round((spec.trial_cpus - DRIVER_CPU) / workers, 3))
    checked = train_job.plan(from_dict(TrainJobConfig, flags))
    cost = cost_metrics(checked)  # known before training: a trial ASHA stops still has it
    with tracking.job_run("train", experiment=study["experiment"], run_name=key, run_id=run_id,
                          params={**checked.params, **_trial_params(params["p"])},
                          tags={**_child_tags(study, key), "framecast.ray_run": checked.name,
                                "framecast.model": checked.config.model}) as run:
        mlflow.log_metrics(cost)
        checkpoint = train_job.fit(checked, run.info.run_id,
                                   callbacks=[CarryForwardReport(cost)], threads=study["threads"])
        result = train_job.finish(checked, run.info.run_id, checkpoint)
        extras = {**cost, **trained_cost(checked, result["model_uri"]),
                  **generation_metrics(checked, result["model_uri"],
                                               study["experiment"])}
        mlflow.log_metrics(extras, step=result["step"])
        final = {**result["metrics"], **extras, "step": float(result["step"])}
        mlflow.set_tag(RESULT_TAG, json.dumps(final))
    tune.report(final)


def cost_metrics(checked: Any) -> dict[str, float]:
    """Parameters; for a frame predictor also MB and forward GFLOPs per sequence (torch's
    counter) of the model the trial trains."""
    from framecast.models.contract import FramePredictor
    from framecast.models.profile import model_cost

    model = checked.build().eval()
    out = {"params": float(sum(p.numel() for p in model.parameters()))}
    if isinstance(model, FramePredictor):
        t, h, _, c = checked.manifest.config.frame_shape
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


def generation_metrics(checked: Any, model_uri: str, experiment: str) -> dict[str, float]:
    """A token generator's greedy continuations of test clips through jobs.generate (frames
    per second with its tokenizer, forward steps, PSNR/SSIM against the truth), after an
    untimed warm-up so one-off costs of the process are not counted; {} for other models."""
    import torch

    from framecast import data as fdata
    from framecast.models.contract import TokenGenerator
    from jobs.generate import GenerateConfig, generate_job

    model = checked.build().eval()
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


def quantize_trial(params: dict) -> None:
    """One quantization trial: jobs.quantize.quantize (its run nested in the trial's child
    run, which gets the trial's params and final metrics)."""
    import mlflow
    import torch

    from framecast import tracking
    from jobs.quantize import quantize

    spec, study, key = _enter_trial(params)
    run_id, done = _earlier_result(study["experiment"], key)
    if done is not None:
        tune.report({**done, "reused": 1.0})
        return
    flags = {**spec.trial_flags(params["p"]), "register": "none",
             "experiment": study["experiment"]}
    config = from_dict(QuantizeJobConfig, flags)
    torch.set_num_threads(study["threads"])
    with tracking.job_run("quantize-trial", experiment=study["experiment"], run_name=key,
                          run_id=run_id, params={**_trial_params(params["p"]),
                                                 **{k: str(v) for k, v in flags.items()}},
                          tags=_child_tags(study, key)):
        result = quantize(config)
        values = {k: float(v) for k, v in result["metrics"].items()}
        mlflow.log_metrics(values)
        for i, row in enumerate(result["history"]):
            mlflow.log_metric("stage_psnr_drop_db", row["psnr_drop_db"], step=i)
        final = {**values, "step": 1.0}
        mlflow.set_tag(RESULT_TAG, json.dumps(final))
    tune.report(final)


TRIALS = {"train": train_trial, "quantize": quantize_trial}


# -- the driver ---------------------------------------------------------------------------

def distribution(param: Param) -> Any:
    """A Param as Ray Tune's search-space object."""
    values = list(param.values)
    if param.kind == "choice":
        return tune.choice(values)
    if param.kind == "grid":
        return tune.grid_search(values)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": tune.randint}[param.kind](*values)


def make_tuner(study: Study, parent_run_id: str, concurrent: int, threads: int) -> tune.Tuner:
    """A new Tuner for the study, or the saved one when Ray Tune can restore it (resume)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = study.spec
    cpus = DRIVER_CPU if spec.job == "train" else spec.trial_cpus
    trainable = tune.with_resources(TRIALS[spec.job], {"cpu": cpus})
    if tune.Tuner.can_restore(str(study.path)):
        print(f"tune: resuming study {study.name} from {study.path}")
        return tune.Tuner.restore(str(study.path), trainable, resume_unfinished=True,
                                  resume_errored=True)
    # stop_last_trials=False: a trial that reaches max_t ends by itself, after jobs.train's
    # finish (final evaluation, model, extras); ASHA would stop it at its step-max_t report.
    scheduler = FIFOScheduler() if spec.scheduler.kind == "fifo" else ASHAScheduler(
        time_attr="step", max_t=spec.scheduler.max_t, grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor, stop_last_trials=False)
    settings = {"name": study.name, "spec": spec.to_dict(), "parent_run_id": parent_run_id,
                "experiment": study.experiment, "home": str(project_home()),
                "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI", ""),
                "train_storage": str(study.storage / f"{study.name}.trials"),
                "threads": threads}
    return tune.Tuner(
        trainable,
        param_space={"p": {p.key: distribution(p) for p in spec.params}, "study": settings},
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, num_samples=spec.num_samples,
            # The generator limits concurrency itself (Tune ignores max_concurrent_trials
            # beside a generator): too many training trials at once starve Ray Data of a CPU.
            scheduler=scheduler,
            search_alg=BasicVariantGenerator(max_concurrent=concurrent,
                                             random_state=spec.seed)),
        run_config=tune.RunConfig(name=study.name, storage_path=str(study.storage), verbose=0,
                                  callbacks=[StudyProgress()],
                                  failure_config=tune.FailureConfig(max_failures=0)))


def _child_runs(experiment: str, parent_run_id: str) -> dict[str, Any]:
    """The study's child runs by trial key."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags[TRIAL_TAG]: r for r in runs if TRIAL_TAG in r.data.tags}


def collect_rows(study: Study, results: Any, parent_run_id: str) -> list[dict[str, Any]]:
    """One row per trial: its params, metrics, steps, status and child run. Child runs of
    trials that ASHA stopped (or a kill left running) end KILLED, tagged why."""
    import mlflow

    children = _child_runs(study.experiment, parent_run_id)
    client = mlflow.MlflowClient()
    rows = []
    # The ResultGrid's trials (ids, configs, states): a Result without any report (a trial
    # that failed at once) carries no trial id.
    for trial in results._experiment_analysis.trials:
        metrics = dict(trial.last_result or {})
        key = f"{study.name}/{trial.trial_id}"
        step = metrics.get("step")
        if trial.status == "ERROR":
            status = "failed"
        elif study.steps and isinstance(step, (int, float)) and step < study.steps:
            status = f"stopped at step {int(step)}"
        else:
            status = "finished"
        child = children.get(key)
        if child is not None and child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, "framecast.tune_stopped", status)
            client.set_terminated(child.info.run_id, "KILLED")
        named = (*study.spec.metrics, *study.spec.plot.values(), *study.spec.pareto)
        rows.append({"trial": trial.trial_id, **trial.config.get("p", {}),
                     **{m: metrics.get(m) for m in named},
                     "step": step, "status": status,
                     "run": child.info.run_id if child is not None else None})
    known = {f"{study.name}/{row['trial']}" for row in rows}
    for key, child in children.items():  # a trial Ray Tune had not saved when a kill came
        if key not in known and child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, "framecast.tune_stopped", "study killed")
            client.set_terminated(child.info.run_id, "KILLED")
    return rows


def best_config(study: Study, row: dict[str, Any]) -> dict[str, Any]:
    """The best trial's full job config, without the study's own settings."""
    spec = study.spec
    flags = spec.trial_flags({p.key: row[p.key] for p in spec.params})
    values = to_dict(from_dict(JOB_CONFIGS[spec.job], flags))
    return {k: v for k, v in values.items() if k not in RESERVED_FLAGS}


def publish(study: Study, rows: list[dict[str, Any]], parent_run_id: str,
            seconds: float) -> dict[str, Any]:
    """Table (Markdown, CSV), plot and best config: written to the study's folder and logged
    to the parent run (study/...)."""
    import mlflow
    import yaml

    from framecast import tune_report

    spec = study.spec
    finished = [r for r in rows if r["status"] == "finished"]
    ranked = tune_report.rank(rows, spec.metric, spec.mode)
    best = next((r for r in tune_report.rank(finished or rows, spec.metric, spec.mode)
                 if isinstance(r.get(spec.metric), (int, float))), None)
    if spec.pareto:
        front = tune_report.pareto_front(ranked, spec.pareto)
        ranked = [{**r, "pareto": on} for r, on in zip(ranked, front, strict=True)]
    extra = [m for m in (*spec.plot.values(), *spec.pareto) if m not in spec.metrics]
    columns = ["trial", *(p.key for p in spec.params), *spec.metrics,
               *dict.fromkeys(extra), "step", "status", *(["pareto"] if spec.pareto else []),
               "run"]
    markdown, csv_text = tune_report.table(ranked, columns)
    folder = study.path
    folder.mkdir(parents=True, exist_ok=True)
    files = {"results.md": markdown.encode(), "results.csv": csv_text.encode()}
    if spec.plot:
        labels = [label({p.key: r[p.key] for p in spec.params}) for r in ranked]
        files["plot.png"] = tune_report.study_plot(
            ranked, spec.plot["x"], spec.plot["y"], color=spec.plot.get("color", ""),
            labels=labels, front=[bool(r.get("pareto")) for r in ranked],
            title=f"{study.name}: {len(rows)} trials")
    if best is not None:
        command = f"python -m jobs.{spec.job} --config {folder / 'best_config.yaml'}"
        header = (f"# Best trial {best['trial']} of study {study.name} ({spec.metric} = "
                  f"{best[spec.metric]:.6g}, {spec.mode}); rerun it with:\n#   {command}\n"
                  "# Flags given on that command line win over this file.\n")
        files["best_config.yaml"] = (header + yaml.safe_dump(
            best_config(study, best), sort_keys=False)).encode()
    for name, data in files.items():
        (folder / name).write_bytes(data)
        mlflow.log_artifact(str(folder / name), artifact_path="study")
    mlflow.log_metrics({"trials": float(len(rows)), "trials_finished": float(len(finished)),
                        "study_seconds": seconds})
    if best is not None:
        mlflow.log_metric(f"best_{spec.metric}", float(best[spec.metric]))
        mlflow.set_tags({"framecast.best_trial": best["trial"],
                         "framecast.best_config": str(folder / "best_config.yaml")})
    return {"table": markdown, "best": best, "folder": folder,
            "best_config": folder / "best_config.yaml" if best is not None else None,
            "plot": folder / "plot.png" if spec.plot else None}


def show_finished(study: Study, parent_run_id: str) -> dict[str, Any]:
    """A finished study: print its table from the parent run; nothing runs."""
    import mlflow

    run = mlflow.MlflowClient().get_run(parent_run_id)
    local = mlflow.artifacts.download_artifacts(run_id=parent_run_id,
                                                artifact_path="study/results.md")
    table = Path(local).read_text()
    print(f"tune: study {study.name} finished (MLflow run {parent_run_id}); 0 trials run")
    print(table, end="")
    best = run.data.tags.get("framecast.best_config")
    if best:
        print(f"tune: best config {best}")
    return {"parent_run_id": parent_run_id, "ran": 0, "reused": 0, "table": table,
            "best_config": Path(best) if best else None, "rows": None}


def tune_job(config: TuneJobConfig) -> dict[str, Any]:
    import mlflow

    from framecast import tracking
    from framecast.cluster import init_ray, total_cpus, verbose

    study = prepare(config)  # before Ray and MLflow: a bad space leaves nothing behind
    spec = study.spec
    parent = tracking.find_run(study.experiment, STUDY_TAG, study.name)
    if parent and mlflow.MlflowClient().get_run(parent).info.status == "FINISHED":
        return show_finished(study, parent)
    init_ray()
    # Trials run on any node: their data, the study's storage and the MLflow store everywhere.
    data = sorted({str(v) for p in spec.params if p.key == "data" for v in p.values}
                  | ({str(spec.base["data"])} if spec.base.get("data") else set()))
    check_storage("tune", data, study.storage, study.experiment)
    cpus = total_cpus()
    # A training trial's Ray Train workers leave one CPU for Ray Data's read tasks.
    room = cpus - 1.0 if spec.job == "train" else cpus
    if spec.trial_cpus > room + 1e-9:
        raise ConfigError(f"{spec.source}: trial_resources.cpu={spec.trial_cpus:g} does not fit "
                          f"{cpus:g} CPUs (at most {room:g}"
                          + (": one stays free for Ray Data)" if spec.job == "train" else ")"))
    concurrent = max(1, int(room / spec.trial_cpus + 1e-9))
    threads = max(1, int(cpus // concurrent))
    # Val metrics come every eval_every steps only; ASHA skips results without its metric.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if not verbose():  # Tune's own heading and tables: the job prints one line per trial
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    PROGRESS.reset(study)
    begin = time.perf_counter()
    with tracking.job_run("tune", experiment=study.experiment, run_name=study.name,
                          run_id=parent, params={"space": spec.source, "job": spec.job,
                                                 "metric": spec.metric, "mode": spec.mode,
                                                 "num_samples": spec.num_samples,
                                                 "scheduler": spec.scheduler.kind,
                                                 "trial_cpus": spec.trial_cpus,
                                                 **{f"base.{k}": v for k, v in
                                                    spec.base.items()},
                                                 **{f"space.{p.key}": f"{p.kind} {list(p.values)}"
                                                    for p in spec.params}},
                          tags={STUDY_TAG: study.name}) as run:
        print(f"tune: study {study.name}: {study.trials} trial(s) of jobs.{spec.job}, "
              f"{concurrent} at a time ({spec.trial_cpus:g} CPU each, {threads} torch "
              f"thread(s)), {spec.scheduler.kind}, {spec.metric} ({spec.mode}); Ray Tune state "
              f"in {study.path}; MLflow run {run.info.run_id}", flush=True)
        tuner = make_tuner(study, run.info.run_id, concurrent, threads)
        results = tuner.fit()
        rows = collect_rows(study, results, run.info.run_id)
        seconds = time.perf_counter() - begin
        out = publish(study, rows, run.info.run_id, seconds)
    ran = PROGRESS.ended - PROGRESS.reused
    print(out["table"], end="")
    print(f"tune: {len(ran)} trial(s) ran this time, {len(rows) - len(ran)} had finished "
          f"before; {seconds:.0f} s")
    if out["plot"]:
        print(f"tune: plot {out['plot']}")
    if out["best_config"]:
        print(f"tune: best config {out['best_config']} (python -m jobs.{spec.job} --config "
              f"{out['best_config']})")
    failed = [r["trial"] for r in rows if r["status"] == "failed"]
    if failed:
        print(f"tune: {len(failed)} trial(s) failed: {', '.join(failed)} (their errors are "
              f"in {study.path})")
    return {"parent_run_id": run.info.run_id, "ran": len(ran), "reused": len(rows) - len(ran),
            "rows": rows, **out}


def main(argv: list[str] | None = None) -> int:
    return run_job("tune", TuneJobConfig, tune_job, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
