"""Run a Ray Tune study defined as data: a search space in tune_spaces/*.yaml.

    python -m jobs.render --kind 2d --num-sequences 400 --size 16 --out data/2d-16
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

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ray import tune

from framecast.config import ConfigError
from framecast.tune_space import Param
from jobs.common import run_job
from jobs.train import check_storage
from jobs.tune_progress import PROGRESS, StudyProgress
from jobs.tune_results import collect_rows, publish, show_finished
from jobs.tune_study import STUDY_TAG, Study, prepare
from jobs.tune_study import TRIAL_TAG as TRIAL_TAG  # the child runs' tag, read by tests
from jobs.tune_trial import DRIVER_CPU, TRIALS, TrialSettings

# This module is the command line and the Tuner; the study's preparation (jobs.tune_study), a
# trial (jobs.tune_trial), the results (jobs.tune_results) and the progress lines
# (jobs.tune_progress) live apart.


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


def distribution(param: Param) -> Any:
    """A Param as Ray Tune's search-space object."""
    values = list(param.values)
    if param.kind == "choice":
        return tune.choice(values)
    if param.kind == "grid":
        return tune.grid_search(values)
    return {"uniform": tune.uniform, "loguniform": tune.loguniform,
            "randint": tune.randint}[param.kind](*values)


def trial_trainable(study: Study, parent_run_id: str, threads: int) -> Any:
    """The study's trial function as Ray Tune runs it: the study's settings passed by
    `tune.with_parameters` (given again on resume, so a trial sees this driver's), the CPUs a
    trial reserves (a training trial's own process: its Ray Train workers reserve the rest)."""
    spec = study.spec
    cpus = DRIVER_CPU if spec.job == "train" else spec.trial_cpus
    settings = TrialSettings.of(study, parent_run_id, threads)
    return tune.with_resources(tune.with_parameters(TRIALS[spec.job], study=settings),
                               {"cpu": cpus})


def make_tuner(study: Study, parent_run_id: str, concurrent: int, threads: int) -> tune.Tuner:
    """A new Tuner for the study, or the saved one when Ray Tune can restore it (resume)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = study.spec
    trainable = trial_trainable(study, parent_run_id, threads)
    # Val metrics come every eval_every steps only; ASHA skips results without its metric.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    if tune.Tuner.can_restore(str(study.path)):
        print(f"tune: resuming study {study.name} from {study.path}")
        return tune.Tuner.restore(str(study.path), trainable, resume_unfinished=True,
                                  resume_errored=True)
    # stop_last_trials=False: a trial that reaches max_t ends by itself, after jobs.train's
    # finish (final evaluation, model, extras); ASHA would stop it at its step-max_t report.
    scheduler = FIFOScheduler() if spec.scheduler.kind == "fifo" else ASHAScheduler(
        time_attr="step", max_t=spec.scheduler.max_t, grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor, stop_last_trials=False)
    return tune.Tuner(
        trainable,
        param_space={"p": {p.key: distribution(p) for p in spec.params}},
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


def tune_job(config: TuneJobConfig) -> dict[str, Any]:
    import mlflow

    from framecast import tracking
    from framecast.cluster import check_gpus, init_ray, total_cpus, verbose

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
    if spec.job == "train" and (spec.base.get("use_gpu") or any(
            p.key == "use_gpu" and any(p.values) for p in spec.params)):
        check_gpus(int(spec.base.get("workers", 1)), f"{spec.source}: use_gpu")
    cpus = total_cpus()
    # A training trial's Ray Train workers leave one CPU for Ray Data's read tasks.
    room = cpus - 1.0 if spec.job == "train" else cpus
    if spec.trial_cpus > room + 1e-9:
        raise ConfigError(f"{spec.source}: trial_resources.cpu={spec.trial_cpus:g} does not fit "
                          f"{cpus:g} CPUs (at most {room:g}"
                          + (": one stays free for Ray Data)" if spec.job == "train" else ")"))
    concurrent = max(1, int(room / spec.trial_cpus + 1e-9))
    threads = max(1, int(cpus // concurrent))
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
