"""The V-BLT paper's comparison as one job: train every listed model at the same budget, score all
with the same protocol against copy-last-frame, and write tables 1 and 2.

    python -m jobs.compare --data data/tri-hard --data data/cubes-hard --preset small --steps 300
    python -m jobs.compare --data DIR --models vblt,unet3d --preset tiny --steps 20
    python -m jobs.compare --data DIR --runs <run id>,vivit-2d@latest   # logged: no training
    python -m jobs.compare --data DIR --lrs 1e-3,2e-3,4e-3   # each model keeps its best lr on val

Each model trains through `jobs.train`'s own entry points (plan, fit with Ray Train, finish) with
the same data, steps, batch, optimizer and seed, as a child MLflow run of this job's run; `--runs`
takes already logged models instead (matched to a data set by the data they were trained on).
Table 1: parameters, MB and forward GFLOPs per sequence (torch's FLOP counter, attention
included, a multiply-add = 2 FLOPs) at the data's frame size and at the paper's 12x64x64.
Table 2, the rollout protocol: every model is given the same first --context frames of each test
clip and predicts the rest autoregressively from its own predictions; MSE, SSIM and PSNR
averaged over the predicted frames, and PSNR per frame ahead (a table and a plot), copy-last-frame
(the last context frame held) beside them. The teacher-forced table (each frame from the true
ones before it) follows, labelled as such. All are printed and written as Markdown and CSV to
--out, logged to the parent run with charts and the learning curves (val PSNR, teacher-forced,
at every --eval-every); each child run holds its model's prediction figure (truth / prediction /
entropy).

`--data` may be given twice (or as DIR,DIR2): one half of table 2 per data set.
`--lrs` trains every model at each peak learning rate and keeps, per model and data set, the run
with the best rollout PSNR on the val split (table 2's protocol; the test split stays unseen
until table 2); the sweep is written as lr_sweep.md/csv and every run stays in MLflow, tagged
chosen or not.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from framecast import tracking
from framecast.config import ConfigError, check_bounds, flat_params, project_home
from framecast.models import registry
from framecast.train import OptimConfig
from jobs.common import run_job

DEFAULT_MODELS = "vblt,vivit,unet3d"


@dataclass(frozen=True)
class CompareConfig(OptimConfig):
    data: str = field(default="", metadata={
        "help": "data set folder(s) from jobs.render: DIR or DIR,DIR2 (or --data twice)"})
    models: str = field(default="", metadata={
        "help": f"frame predictors to train and compare, comma-separated (empty: "
                f"{DEFAULT_MODELS}, or none when --runs is given; 'none': none)"})
    preset: str = field(default="small", metadata={
        "help": "preset of every model: tiny (tests), small (CPU), paper (table 1 sizes)"})
    lrs: str = field(default="", metadata={
        "help": "peak lrs to try, comma-separated (e.g. 1e-3,2e-3,4e-3): every model trains at "
                "each and keeps the one with the best rollout PSNR on val (test stays "
                "unseen); empty: --lr alone"})
    runs: str = field(default="", metadata={
        "help": "logged models to score instead of training them: run ids, runs:/ or models:/ "
                "URIs or registered names, comma-separated"})
    context: int = field(default=4, metadata={
        "help": "frames every model is given before it rolls out the rest of each test clip "
                "(1..T-1, at least each model's own minimum context)"})
    test_sequences: int = field(default=0, metadata={
        "help": "score the first N test sequences (0: the whole split)"})
    eval_every: int = field(default=0, metadata={
        "help": "steps between val evaluations (the learning curves); 0 = once per epoch"})
    eval_sequences: int = field(default=16, metadata={"help": "val sequences per evaluation"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers per model"})
    cpus_per_worker: float = field(default=0.0, metadata={"help": "CPUs per worker; 0 = auto"})
    out: str = field(default="", metadata={
        "help": "folder for the tables (default: $FRAMECAST_HOME/compare/<run name>)"})
    storage: str = field(default="", metadata={
        "help": "Ray Train storage (default: $FRAMECAST_HOME/ray_results)"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})
    seed: int = field(default=0, metadata={"help": "model init and data order seed (all models)"})

    def __post_init__(self) -> None:
        if not self.data_dirs:
            raise ConfigError("--data is required: a folder written by `python -m jobs.render`")
        # Absolute from here on: Ray Train workers run in their own working directory.
        object.__setattr__(self, "data", ",".join(
            os.path.abspath(os.path.expanduser(d)) for d in self.data_dirs))
        if len(self.data_dirs) > 2 or len(set(self.data_dirs)) != len(self.data_dirs):
            raise ConfigError(f"--data {self.data!r}: give one or two different folders")
        if not self.model_names and not self.runs:
            raise ConfigError("--models none and no --runs given: nothing to compare")
        for name in self.model_names:
            entry = registry.entry(name)  # unknown names: one line listing the known ones
            if entry.model_class.family != "frame_predictor":
                raise ConfigError(f"--models {name}: a {entry.model_class.family}, not a frame "
                                  "predictor; accepted: "
                                  + ", ".join(registry.available_models("frame_predictor")))
            registry.model_config(name, self.preset)  # unknown preset: one line
        check_bounds(self, positive=("steps", "batch_size", "workers", "eval_sequences"))
        if self.lrs and not self.lr_grid:
            raise ConfigError(f"--lrs {self.lrs!r}: give positive numbers, comma-separated")
        if self.lrs and self.run_refs:
            raise ConfigError("--lrs chooses among runs this job trains; it cannot choose for "
                              "--runs (already trained)")
        if self.context < 1:
            raise ConfigError(f"--context {self.context}: give at least 1 frame")
        if self.test_sequences < 0 or self.eval_every < 0:
            raise ConfigError("test_sequences and eval_every must be >= 0")

    @property
    def data_dirs(self) -> list[str]:
        return [d.strip() for d in self.data.split(",") if d.strip()]

    @property
    def model_names(self) -> list[str]:
        """The models to train: --models, else the default three unless --runs gives some."""
        if self.models.strip() == "none":
            return []
        models = self.models or ("" if self.runs else DEFAULT_MODELS)
        return [m.strip() for m in models.split(",") if m.strip()]

    @property
    def lr_grid(self) -> list[float]:
        """The peak lrs to train at ([lr] without --lrs); [] when --lrs does not parse."""
        if not self.lrs:
            return [self.lr]
        try:
            grid = [float(x) for x in self.lrs.split(",") if x.strip()]
        except ValueError:
            return []
        return sorted(set(grid)) if grid and min(grid) > 0 else []

    @property
    def run_refs(self) -> list[str]:
        return [r.strip() for r in self.runs.split(",") if r.strip()]


@dataclass
class Entrant:
    """One model on one data set: trained here (`plan`) or taken from MLflow (`model`)."""

    name: str
    data: str
    plan: Any = None
    model: Any = None
    ref: str = ""
    run_id: str = ""
    preset: str = ""
    lr: float = 0.0

    @property
    def key(self) -> str:
        """Model and data set: what one lr is chosen for."""
        return f"{self.name}@{self.data}"


def _kind(manifest: Any) -> str:
    return manifest.config.kind


def data_labels(manifests: dict[str, Any]) -> dict[str, str]:
    """Table 2's name of each data set: its kind (2d, 3d), with the folder when kinds repeat."""
    kinds = [_kind(m) for m in manifests.values()]
    return {d: _kind(m) if kinds.count(_kind(m)) == 1 else f"{_kind(m)}:{Path(d).name}"
            for d, m in manifests.items()}


def prepare(config: CompareConfig, stamp: str) -> tuple[dict[str, Any], list[Entrant]]:
    """Check every data set, model and logged run before Ray starts or a run is opened; returns
    ({data dir: manifest}, entrants in table order)."""
    from framecast import data as fdata
    from jobs.train import TrainJobConfig, plan

    manifests = {d: fdata.read_manifest(d) for d in config.data_dirs}
    for d, m in manifests.items():
        if not m.counts["test"]:
            raise ConfigError(f"the test split of {d} is empty: table 2 scores the test split")
    shared = {f.name: getattr(config, f.name) for f in fields(OptimConfig) if f.name != "lr"}
    grid = config.lr_grid
    entrants = []
    for i, (d, manifest) in enumerate(manifests.items()):
        for name, lr in [(n, lr) for n in config.model_names for lr in grid]:
            suffix = f"-lr{lr:g}" if len(grid) > 1 else ""
            train_config = TrainJobConfig(
                **shared, lr=lr, data=d, model=name, preset=config.preset,
                workers=config.workers, cpus_per_worker=config.cpus_per_worker,
                eval_every=config.eval_every, eval_sequences=config.eval_sequences,
                seed=config.seed, register="none",
                name=f"{stamp}-{name}-{_kind(manifest)}-{i}{suffix}", storage=config.storage,
                experiment=config.experiment)
            entrants.append(Entrant(name, d, plan=plan(train_config), preset=config.preset,
                                    lr=lr))
    for ref in config.run_refs:
        entrants += _logged_entrant(ref, manifests)
    # A logged model named as another entrant would replace it in the tables (a trained model
    # has one key for all its lrs).
    logged = Counter(e.key for e in entrants if e.model is not None)
    trained = {e.key for e in entrants if e.model is None}
    for e in entrants:
        if e.model is not None and (logged[e.key] > 1 or e.key in trained):
            e.name = f"{e.name} ({e.ref})"
    check_context(config.context, manifests, entrants)
    return manifests, entrants


def check_context(context: int, manifests: dict[str, Any], entrants: list[Entrant]) -> None:
    """Refuse (one line) a rollout context the clips or a model cannot give: 1..T-1 frames, and
    at least the model's own minimum context (a 4x4x4 V-BLT reads whole 4-frame slices)."""
    for d, manifest in manifests.items():
        frames = manifest.config.frame_shape[0]
        if not 1 <= context < frames:
            raise ConfigError(f"--context {context}: the clips of {d} have {frames} frames; "
                              f"give 1..{frames - 1}")
    for e in entrants:
        least = (e.model if e.model is not None else e.plan.build()).context_frames
        if context < least:
            raise ConfigError(f"--context {context}: {e.name} ({e.preset}) needs at least "
                              f"{least} context frames")


def _logged_entrant(ref: str, manifests: dict[str, Any]) -> list[Entrant]:
    """A logged model (`--runs`) placed on the data set it was trained on (the only one, when
    a single data set is compared)."""
    from framecast.models.contract import FramePredictor
    from jobs.common import load_logged_model

    model, meta = load_logged_model(ref)
    if not isinstance(model, FramePredictor):
        raise ConfigError(f"--runs {ref}: a {model.family}, not a frame predictor")
    trained_on = str(Path(str(meta.get("data", ""))).resolve()) if meta.get("data") else ""
    matches = [d for d in manifests if str(Path(d).resolve()) == trained_on]
    if not matches and len(manifests) == 1:
        matches = list(manifests)
    if not matches:
        raise ConfigError(f"--runs {ref}: trained on {meta.get('data') or 'unknown data'}, "
                          f"none of --data {', '.join(manifests)}")
    d = matches[0]
    model.check_data(tuple(manifests[d].config.frame_shape))
    return [Entrant(meta.get("name") or model.registry_name, d, model=model, ref=ref,
                    preset=str(meta.get("preset", "logged")))]


def train_entrant(entrant: Entrant) -> None:
    """Train through jobs.train's fit and finish in a child run; keeps the trained model."""
    import mlflow

    from jobs.common import load_logged_model
    from jobs.train import fit_and_finish, train_run

    plan = entrant.plan
    print(f"compare: training {entrant.name} on {entrant.data} ({plan.config.steps} steps)")
    with train_run(plan) as run:
        entrant.run_id = run.info.run_id
        logged = fit_and_finish(plan, run.info.run_id)
        # The model as logged, decoding chosen on val included (a rebuild from the checkpoint
        # would read with the config's default decoding instead).
        entrant.model = load_logged_model(logged["model_uri"])[0].eval()
        mlflow.set_tag(tracking.COMPARE_TAG, "trained")


def learning_curve(run_id: str, kind: str, name: str) -> list[dict[str, Any]]:
    """val PSNR/SSIM (and copy-last's) at every evaluation of a child run."""
    import mlflow

    client = mlflow.MlflowClient()
    keys = ("val_psnr", "val_ssim", "val_psnr_copy_last", "val_ssim_copy_last")
    by_step: dict[int, dict[str, Any]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            by_step.setdefault(m.step, {"data": kind, "model": name, "step": m.step})[key] = m.value
    return [by_step[s] for s in sorted(by_step)]


def choose_lrs(entrants: list[Entrant], labels: dict[str, str],
               score: Callable[[Entrant], float | None] | None = None
               ) -> tuple[list[Entrant], list[dict[str, Any]]]:
    """Keep, per model and data set, the trained run best on val: by `score(entrant)` when
    given (jobs.compare passes `read_by_val_rollouts`' scores: table 2's protocol), else by the
    final val PSNR its run logged; tag each child run chosen or not. Returns (entrants kept,
    lr sweep rows)."""
    import mlflow

    from framecast import comparison

    trained = [e for e in entrants if e.plan is not None]
    if len({e.key for e in trained}) == len(trained):  # one lr each: nothing to choose
        return entrants, []
    client, finals = mlflow.MlflowClient(), {}
    for e in trained:  # the final val PSNR with the decoding chosen on val (jobs.train.finish)
        if score is not None:
            finals[id(e)] = score(e)
            continue
        final = client.get_run(e.run_id).data.metrics.get("final_val_psnr")
        if final is None:  # a run that never reached finish: its last training-time val point
            history = client.get_metric_history(e.run_id, "val_psnr")
            final = max(history, key=lambda m: m.step).value if history else None
        finals[id(e)] = final
    chosen, rows = comparison.pick_by_val([(e.key, e.lr, finals[id(e)]) for e in trained])
    column = "val rollout PSNR" if score is not None else "final val PSNR"
    sweep = []
    for e, row in zip(trained, rows, strict=True):
        client.set_tag(e.run_id, tracking.COMPARE_LR_TAG,
                       "chosen" if row["chosen"] else "not chosen")
        sweep.append({"data": labels[e.data], "model": e.name, "lr": e.lr,
                      column: row["final val PSNR"], "chosen": row["chosen"]})
    kept = [e for e in entrants if e.plan is None or e.lr == chosen[e.key]]
    print("compare: lr chosen on val: " + ", ".join(
        f"{e.name} {labels[e.data]} {e.lr:g}" for e in kept if e.plan is not None))
    return kept, sweep


def read_by_val_rollouts(entrants: list[Entrant], config: CompareConfig,
                         labels: dict[str, str]) -> dict[int, float | None]:
    """Give every model the decoding (trimmed mean, mean, argmax) whose rollouts from
    --context frames score best on its data set's val split (the first --eval-sequences clips):
    jobs.train chose one teacher-forced, where the plain mean's sharp first frame can blur into
    grey once it is fed back. Logs val_rollout_psnr and the tag framecast.rollout_decode to
    each run; returns {id(entrant): val rollout PSNR} (None where val is empty), which the lr
    choice reads."""
    import mlflow

    from framecast import data as fdata
    from framecast.predict import adopt_best_decode, describe_decode_choice

    splits: dict[str, Any] = {}
    client, scores = mlflow.MlflowClient(), {}
    for e in entrants:
        if e.data not in splits:
            splits[e.data] = fdata.load_numpy(e.data, "val")[0][:config.eval_sequences]
        val = splits[e.data]
        if not len(val):
            scores[id(e)] = None
            continue
        best, psnr = adopt_best_decode(e.model, val, batch_size=config.batch_size,
                                       context=config.context)
        scores[id(e)] = psnr[best]
        client.log_metric(e.run_id, "val_rollout_psnr", psnr[best])
        client.set_tag(e.run_id, tracking.ROLLOUT_DECODE_TAG, best)
        print(f"compare: {e.name} {labels[e.data]}"
              + (f" lr {e.lr:g}" if e.plan is not None else "") + ": rollouts "
              + describe_decode_choice(best, psnr))
    return scores


def compare(config: CompareConfig) -> dict[str, Any]:
    """Train (or load), choose lrs on val (--lrs), score and tabulate; returns {'cost',
    'quality', 'curves', 'lr_sweep', 'out', 'run_id'}."""
    import mlflow

    from framecast import comparison, tracking
    from framecast import data as fdata
    from framecast.cluster import init_ray
    from jobs.common import log_prediction_figure
    from jobs.train import check_storage

    stamp = f"compare-{config.preset}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    manifests, entrants = prepare(config, stamp)  # all checks before Ray and MLflow runs
    trained = [e.plan for e in entrants if e.plan is not None]
    if trained:
        init_ray()
        check_storage("compare", sorted({str(p.config.data) for p in trained}),
                      trained[0].storage, config.experiment)
    out = Path(config.out).resolve() if config.out else project_home() / "compare" / stamp
    cost, quality, curves, horizon, teacher = [], [], [], [], []
    with tracking.job_run("compare", experiment=config.experiment, run_name=stamp,
                          params=flat_params(config)) as parent:
        for entrant in entrants:
            if entrant.plan is not None:
                train_entrant(entrant)
            else:
                with tracking.job_run("compare-logged", experiment=config.experiment,
                                      run_name=f"{entrant.name}-{entrant.ref}",
                                      tags={tracking.MODEL_REF_TAG: entrant.ref}) as run:
                    entrant.run_id = run.info.run_id
                    videos, _ = fdata.load_numpy(entrant.data, "val")
                    if not len(videos):
                        videos, _ = fdata.load_numpy(entrant.data, "test")
                    log_prediction_figure(entrant.model, videos[0], title=entrant.ref)
        labels = data_labels(manifests)
        val_scores = read_by_val_rollouts(entrants, config, labels)
        entrants, sweep = choose_lrs(entrants, labels, lambda e: val_scores[id(e)])
        seen_cost = set()
        for d, manifest in manifests.items():
            kind = labels[d]
            here = [e for e in entrants if e.data == d]
            if not here:
                continue
            test, _ = fdata.load_numpy(d, "test")
            if config.test_sequences:
                test = test[:config.test_sequences]
            shared = comparison.common_context([e.model for e in here])
            frames = f"{shared}..{test.shape[1] - 1}"
            print(f"compare: scoring {len(here)} models on {len(test)} test sequences of {d}: "
                  f"rollouts from {config.context} context frames, teacher-forced on frames "
                  f"{frames}")
            ahead, forced, steps = {}, {}, {}
            for e in here:
                ahead[e.name] = comparison.rollout_metrics(e.model, test, config.context,
                                                           batch_size=config.batch_size)
                forced[e.name] = comparison.score(e.model, test, shared,
                                                  batch_size=config.batch_size)
                steps[e.name] = e.model.frames_per_step
                log_scores(e.run_id, ahead[e.name], forced[e.name])
                shape = tuple(manifest.config.frame_shape)
                if (e.name, shape) not in seen_cost:
                    seen_cost.add((e.name, shape))
                    cost.append(comparison.cost_row(e.name, e.preset, e.model, shape))
                if e.plan is not None:
                    curves += learning_curve(e.run_id, kind, e.name)
            copy = comparison.hold_last_metrics(test, config.context)
            quality += comparison.rollout_rows(kind, ahead, copy, config.context, steps)
            horizon += comparison.horizon_rows(kind, ahead, copy)
            teacher += comparison.quality_rows(
                kind, forced, comparison.copy_last_score(test, shared), frames)
        written = comparison.write_tables(out, cost, quality, curves, sweep, horizon, teacher)
        for path in written:
            mlflow.log_artifact(str(path), artifact_path="figures" if path.suffix == ".png"
                                else "tables")
        log_parent_metrics(quality, horizon, teacher)
        print("\nTable 1: size and compute per sequence (" + comparison.FLOPS_CONVENTION + ")\n"
              + comparison.markdown(cost) + "\n" + "\n".join(comparison.convention_notes(cost)))
        print(f"\nTable 2: test split, rollouts from the same {config.context} context frames "
              "(each model fed its own predictions; frames/step: frames one forward step "
              "predicts)\n" + comparison.markdown(quality))
        print("\nRollout PSNR (dB) per frame ahead of the context\n"
              + comparison.markdown(horizon))
        print("\nTeacher-forced (each frame from the true frames before it; every model on the "
              "frames after the longest context among them)\n" + comparison.markdown(teacher))
        if sweep:
            print(f"\nLearning rates (rollout PSNR on val from {config.context} context frames, "
                  "decoding chosen on val; the chosen one scored on test)\n"
                  + comparison.markdown(sweep))
        print(f"\ncompare: tables in {out}; MLflow run {parent.info.run_id}")
    return {"cost": cost, "quality": quality, "curves": curves, "lr_sweep": sweep,
            "horizon": horizon, "teacher_forced": teacher, "out": out,
            "run_id": parent.info.run_id}


def log_scores(run_id: str, ahead: dict[str, Any], forced: dict[str, float]) -> None:
    """A model's test scores in its child run: test_rollout_<metric> (averaged over the
    predicted frames), test_rollout_psnr_ahead at step = frames ahead, and the teacher-forced
    test_<metric>."""
    import mlflow
    import numpy as np
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(f"test_rollout_{k}", float(np.mean(v)), now, 0) for k, v in ahead.items()]
    batch += [Metric("test_rollout_psnr_ahead", float(v), now, i + 1)
              for i, v in enumerate(ahead["psnr"])]
    batch += [Metric(f"test_{k}", v, now, 0) for k, v in forced.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def log_parent_metrics(quality: list[dict], horizon: list[dict], teacher: list[dict]) -> None:
    """<data>_<model>_<metric> (rollout), <data>_<model>_psnr_ahead (step = frames ahead) and
    <data>_<model>_tf_<metric> (teacher-forced) in the parent run."""
    import mlflow
    from mlflow.entities import Metric

    def key(r: dict) -> str:
        return f"{r['data']}_{str(r['model']).replace('-', '_')}"

    now = int(time.time() * 1000)
    batch = [Metric(f"{key(r)}_{m.lower()}", float(r[m]), now, 0)
             for r in quality for m in ("MSE", "SSIM", "PSNR")]
    batch += [Metric(f"{key(r)}_tf_{m.lower()}", float(r[m]), now, 0)
              for r in teacher for m in ("MSE", "SSIM", "PSNR")]
    batch += [Metric(f"{key(r)}_psnr_ahead", float(v), now, int(k[1:]))
              for r in horizon for k, v in r.items() if k.startswith("+")]
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=batch)


def merge_data_flags(argv: list[str]) -> list[str]:
    """`--data A --data B` -> `--data A,B` (argparse would keep only the last)."""
    dirs, rest, i = [], [], 0
    while i < len(argv):
        if argv[i] == "--data" and i + 1 < len(argv):
            dirs.append(argv[i + 1])
            i += 2
            continue
        if argv[i].startswith("--data="):
            dirs.append(argv[i].partition("=")[2])
        else:
            rest.append(argv[i])
        i += 1
    return rest + (["--data", ",".join(dirs)] if dirs else [])


def main(argv: list[str] | None = None) -> int:
    argv = merge_data_flags(sys.argv[1:] if argv is None else list(argv))
    return run_job("compare", CompareConfig, compare, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
