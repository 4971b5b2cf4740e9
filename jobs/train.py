"""Train a video-prediction model with Ray Train; log everything to MLflow.

    python -m jobs.train --model vblt --preset small --data data/2d-demo-s0 --steps 300 --workers 2
    # (data/2d-demo-s0: the 2D data `make demo` renders; any folder from jobs.render)
    ray job submit --working-dir . -- python -m jobs.train --data /shared/data/tri --preset paper

    python -m jobs.train --data DIR --preset tiny --model-config global_layers=2,patch=1x4x4

Any registered model trains here (`--model`; its family's contract is in
`framecast.models.contract`): each worker reads its shard of the data set's train split (a Ray
Dataset) and runs the plain PyTorch loop in `framecast.train`, which minimises the model's own
loss; GPU workers train in bf16 autocast. `--model-config` overrides fields of the preset's
config, checked (with the data's frame shape) before Ray starts. Checkpoints go through
`ray.train.report`: a worker failure retries from the last one (`--max-failures`), and rerunning
with the same `--name` resumes a killed run with the same step count and optimizer state, logging
into the same MLflow run. At the end the model is evaluated on the val split against
copy-last-frame (for a frame predictor), its figure is logged, and the model is logged and
registered in MLflow.

A Ray Tune trial calls the same pieces: `plan` (checks, no Ray, no MLflow), `fit` (Ray Train in
the caller's Ray, into the caller's MLflow run, with the caller's callbacks) and `finish`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framecast import data as fdata
from framecast import tracking
from framecast.config import ConfigError, check_bounds, flat_params, project_home, to_dict
from framecast.models import registry
from framecast.train import OptimConfig
from jobs.common import log_prediction_figure, run_job

REPORT_POLL_ENV, REPORT_POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2"
PLACEMENTS = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")  # Ray's placement strategies
NODE_TAG = tracking.NODE_TAG  # the Ray node id each worker rank ran on (last attempt)
# A --stream run's generating indices, per rank; a resumed attempt's are logged apart.
STREAM_LOG = "stream/indices_rank{}.json"
STREAM_LOG_RESUMED = "stream/indices_rank{}_from_step{}.json"


@dataclass(frozen=True)
class TrainJobConfig(OptimConfig):
    data: str = field(default="", metadata={"help": "data set folder from jobs.render (required)"})
    model: str = field(default="vblt", metadata={
        "help": "model name in the registry: " + ", ".join(registry.available_models())})
    preset: str = field(default="small", metadata={
        "help": "model preset: " + "; ".join(f"{m}: {', '.join(registry.presets(m))}"
                                             for m in registry.available_models())})
    model_config: str = field(default="", metadata={
        "help": "override model fields: KEY=VALUE[,KEY=VALUE...], tuples written 2x4x4 "
                "(e.g. global_layers=2,patch=1x4x4)"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers (data parallel)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, bf16 autocast"})
    cpus_per_worker: float = field(default=0.0, metadata={
        "help": "CPUs reserved per worker; 0 = auto (leaves room for Ray Data's read tasks)"})
    placement: str = field(default="PACK", metadata={
        "help": "how Ray places the workers on nodes: PACK, SPREAD, STRICT_PACK or "
                "STRICT_SPREAD (one worker per node)"})
    worker_resources: str = field(default="", metadata={
        "help": "custom Ray resources each worker also reserves: NAME=N[,NAME=N...] (e.g. "
                "trainer=1 where each node offers trainer=1: one worker per node)"})
    eval_every: int = field(default=0, metadata={
        "help": "steps between val evaluations during training; 0 = once per epoch"})
    eval_sequences: int = field(default=16, metadata={
        "help": "val sequences used by those evaluations (the final one uses the whole split)"})
    cache_mb: float = field(default=1024.0, metadata={
        "help": "keep each worker's train shard in memory after the first epoch when it is at "
                "most this many MB, reshuffled every epoch (0: stream it from Ray Data every "
                "epoch)"})
    stream: bool = field(default=False, metadata={
        "help": "train on sequences Ray Data renders as training reads them, each used once "
                "(indices after the data set's, its render config; val and test stay --data's)"})
    stream_actors: int = field(default=1, metadata={
        "help": "render actors feeding a --stream run (they share the CPUs workers leave)"})
    max_failures: int = field(default=1, metadata={"help": "worker-failure retries"})
    name: str = field(default="", metadata={
        "help": "run name; reuse it to resume a killed run (default: model-preset-kind-time)"})
    storage: str = field(default="", metadata={
        "help": "Ray Train storage for checkpoints (default: $FRAMECAST_HOME/ray_results)"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})
    register: str = field(default="", metadata={
        "help": "MLflow registered model name (default: <model>-<kind>); 'none' to skip"})
    seed: int = field(default=0, metadata={"help": "model init and data order seed"})

    def __post_init__(self) -> None:
        if not self.data:
            raise ConfigError("--data is required: a folder written by `python -m jobs.render`")
        # Absolute from here on: Ray Train workers run in their own working directory, where
        # a relative --data (as the docs write it) does not exist.
        object.__setattr__(self, "data", os.path.abspath(os.path.expanduser(self.data)))
        check_bounds(self, positive=("steps", "batch_size", "workers", "log_every",
                                     "checkpoint_every", "stream_actors", "lr"),
                     non_negative=("warmup_steps", "eval_every", "cache_mb"))
        registry.model_config(self.model, self.preset, **self.overrides)  # names, keys, types
        if not 0 <= self.own_inputs < 1:
            raise ConfigError(f"own_inputs={self.own_inputs} must be in [0, 1)")
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"placement={self.placement!r}: expected one of "
                              f"{', '.join(PLACEMENTS)}")
        _ = self.extra_resources  # checks --worker-resources
        if self.register not in ("", "none"):
            from framecast.tracking import check_registered_name

            check_registered_name(self.register)
        family = registry.entry(self.model).model_class.family
        if self.own_inputs and family != "frame_predictor":
            raise ConfigError(f"--own-inputs is for frame predictors; {self.model} is a "
                              f"{family}")

    @property
    def extra_resources(self) -> dict[str, float]:
        """--worker-resources as {name: amount}."""
        resources = {}
        for item in filter(None, self.worker_resources.split(",")):
            name, _, amount = (part.strip() for part in item.partition("="))
            try:
                value = float(amount)
            except ValueError:
                value = 0.0
            if not name or value <= 0 or name.upper() in ("CPU", "GPU"):
                raise ConfigError(f"worker_resources: {item!r}: expected NAME=N with N > 0 and "
                                  "a custom resource's NAME (CPUs: --cpus-per-worker, GPUs: "
                                  "--use-gpu)")
            resources[name] = value
        return resources

    @property
    def overrides(self) -> dict[str, Any]:
        """--model-config as typed config fields."""
        return registry.parse_overrides(self.model, self.model_config)


@dataclass(frozen=True)
class TrainPlan:
    """What a training run will do, checked before Ray starts or an MLflow run exists."""

    config: TrainJobConfig
    manifest: fdata.Manifest
    model: Any  # the model's config dataclass: preset + overrides, fitted to the data
    name: str  # the Ray Train run name (reused to resume)
    storage: Path
    components: dict[str, Any] = dataclasses.field(default_factory=dict)  # e.g. a tokenizer
    # The model `plan` built to check the config, untouched: the first `build` hands it out.
    built: list[Any] = dataclasses.field(default_factory=list, repr=False, compare=False)

    def build(self) -> Any:
        """A model of this plan (around its loaded components), as initialised: the one `plan`
        built for its checks the first time, a fresh one after (building costs seconds for a
        large preset)."""
        if self.built:
            return self.built.pop()
        return registry.entry(self.config.model).build(self.model, **self.components)

    @property
    def registered_name(self) -> str | None:
        """The registered model name the run registers under (None: --register none)."""
        register = self.config.register
        return None if register == "none" else (
            register or f"{self.config.model}-{self.manifest.config.kind}")

    @property
    def params(self) -> dict[str, Any]:
        """What the MLflow run records: job flags, data, and every field of the model config."""
        model = {f"model.{k}": "x".join(map(str, v)) if isinstance(v, list) else v
                 for k, v in to_dict(self.model).items()}  # tuples as written on the CLI
        return {**flat_params(self.config), "data_kind": self.manifest.config.kind,
                "data_sequences": self.manifest.config.num_sequences, **model}


def plan(config: TrainJobConfig) -> TrainPlan:
    """Check the data folder, the split sizes and the model config against the data's frames;
    raises ConfigError/DatasetError with one line. No Ray, no MLflow."""
    manifest = fdata.read_manifest(config.data)
    if not config.stream and manifest.counts["train"] < config.batch_size * config.workers:
        raise ConfigError(f"the train split has {manifest.counts['train']} sequences, fewer than "
                          f"batch_size x workers = {config.batch_size * config.workers}")
    if not manifest.counts.get("val") and not manifest.counts.get("test"):
        raise ConfigError(f"{config.data} has no val or test sequences ({manifest.counts}) "
                          "for the final evaluation; render more (--num-sequences)")
    from framecast.model_io import load_components

    frame_shape = tuple(manifest.config.frame_shape)
    entry = registry.entry(config.model)
    model = registry.model_config(config.model, config.preset, frame_shape=frame_shape,
                                  **config.overrides)
    components = load_components(entry.model_class.component_refs(model),
                                 entry.model_class.component_families())
    try:
        built = entry.build(model, **components)
        built.check_data(frame_shape)
    except ConfigError:
        raise
    except (TypeError, ValueError) as err:  # e.g. a component of the wrong family
        raise ConfigError(f"{config.model}: {err}") from None
    name = config.name or (f"{config.model}-{config.preset}-{manifest.config.kind}-"
                           f"{datetime.datetime.now():%Y%m%d-%H%M%S}")
    storage = Path(config.storage).resolve() if config.storage else (
        project_home() / "ray_results")
    return TrainPlan(config, manifest, model, name, storage, components, [built])


def train_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: build, maybe restore, train, report."""
    import time

    import mlflow
    import ray
    import ray.train
    import ray.train.torch
    import torch
    from mlflow.entities import Metric

    from framecast.cluster import node_cpus
    from framecast.config import from_dict
    from framecast.heap import keep_freed_memory
    from framecast.train import (
        Objective,
        cached_epochs,
        load_checkpoint,
        make_optimizer,
        train_loop,
    )

    # The job's checks ran on the driver (they need the registry there): the loop's fields only.
    job = loop_config["job"]
    config = from_dict(OptimConfig, {f.name: job[f.name] for f in dataclasses.fields(OptimConfig)})
    ctx = ray.train.get_context()
    chief = ctx.get_world_rank() == 0
    torch.manual_seed(job["seed"])
    # The cluster's share per worker, but never more threads than this node has cores.
    torch.set_num_threads(max(1, min(int(loop_config["threads"]), node_cpus())))
    keep_freed_memory()  # each step's big activations and gradients reuse the last step's pages
    model = loop_config["entry"].build(loop_config["model"], **loop_config["components"])
    device = ray.train.torch.get_device()
    # DDP must wrap the loss (see Objective): its forward is where gradients are synchronised.
    model = ray.train.torch.prepare_model(Objective(model, config.own_inputs))
    optimizer = make_optimizer(model, config)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = load_checkpoint(d, model, optimizer)
        print(f"train: worker {ctx.get_world_rank()} resumed at step {start}")

    shard = ray.train.get_dataset_shard("train")
    streamed: list[int] = []  # the generating indices of the streamed sequences this rank read

    def epoch_batches(epoch: int) -> Iterator[torch.Tensor]:
        for batch in shard.iter_torch_batches(batch_size=config.batch_size, drop_last=True,
                                              local_shuffle_buffer_size=4 * config.batch_size,
                                              local_shuffle_seed=job["seed"] + epoch):
            yield batch["frames"]

    def stream_batches() -> Iterator[torch.Tensor]:
        for batch in shard.iter_torch_batches(batch_size=config.batch_size, drop_last=True):
            streamed.extend(batch["index"].tolist())
            yield batch["frames"]
        raise RuntimeError(f"the training stream ran dry after {len(streamed)} sequences")

    batches = stream_batches() if job["stream"] else cached_epochs(
        epoch_batches, batch_size=config.batch_size, seed=job["seed"],
        limit_bytes=int(job["cache_mb"] * 2**20))

    val = fdata.load_numpy(job["data"], "val")[0][:job["eval_sequences"]] if chief else None
    client = mlflow.MlflowClient(loop_config["tracking_uri"])
    # Where each rank ran, so a run on a cluster shows its placement.
    client.set_tag(loop_config["run_id"], NODE_TAG.format(ctx.get_world_rank()),
                   ray.get_runtime_context().get_node_id())

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if chief:  # the driver prints progress from these (`follow_run`)
            step = int(metrics["step"])
            now = int(time.time() * 1000)
            client.log_batch(loop_config["run_id"], metrics=[
                Metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"])
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def evaluate_val(m):
        if not len(val):
            return {}
        return {f"val_{k}": v for k, v in m.evaluate(val, batch_size=config.batch_size).items()}

    train_loop(model, optimizer, batches, config, report, start_step=start, device=device,
               bf16=device.type == "cuda", is_chief=chief, evaluate=evaluate_val,
               eval_every=loop_config["eval_every"])
    if job["stream"]:
        rank = ctx.get_world_rank()
        name = STREAM_LOG_RESUMED.format(rank, start) if start else STREAM_LOG.format(rank)
        client.log_text(loop_config["run_id"], json.dumps(streamed), name)


def _shippable(entry: registry.ModelEntry) -> registry.ModelEntry:
    """The registry entry as Ray will send it to the workers: a model class defined outside the
    framecast package (a user's script, a test) travels by value, since the workers cannot
    import the module that registered it."""
    import sys as _sys

    from ray import cloudpickle

    module = entry.model_class.__module__
    if module.split(".")[0] != "framecast" and module in _sys.modules:
        cloudpickle.register_pickle_by_value(_sys.modules[module])
    return entry


@contextlib.contextmanager
def ctrl_c_reaches_the_job() -> Iterator[None]:
    """Ray Train's fit() replaces the SIGINT handler with its own (abort the run gracefully) and
    never restores the job's: a Ctrl-C then ended as a failed run with exit 1. Here its handler
    still aborts the run, but a Ctrl-C it handled is noted and raised as KeyboardInterrupt once
    fit() is back (so the job ends its runs KILLED and says 'interrupted'), and the job's own
    handler is restored. Outside the main thread (a Tune trial) Ray installs none: no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous, install, pressed = signal.getsignal(signal.SIGINT), signal.signal, []

    def noting(signum: int, handler: Any) -> Any:
        if signum == signal.SIGINT and callable(handler):
            ray_handler = handler

            def handler(sig: int, frame: Any) -> None:
                pressed.append(sig)
                ray_handler(sig, frame)
        return install(signum, handler)

    signal.signal = noting
    try:
        yield
    except BaseException as err:  # Ray's handler may also sys.exit(0) after the abort
        if pressed and not isinstance(err, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        raise
    finally:
        signal.signal = install
        install(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def stream_cursor(plan: TrainPlan) -> Any:
    """The run's StreamCursor, on this (the driver's) node, where the run's storage folder is
    known to be readable: it goes on from the index an earlier attempt of the run left there."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from jobs.stream_cursor import StreamCursor

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    return StreamCursor.options(scheduling_strategy=here).remote(
        str(plan.storage / plan.name), plan.manifest.config.num_sequences)


def stream_dataset(plan: TrainPlan, worker_cpus: float, cursor: Any) -> Any:
    """A Ray Dataset that renders the training sequences as the workers read them: indices from
    num_sequences on of the data set's render config (never its own train/val/test sequences),
    each once, claimed from `cursor` (a jobs.stream_cursor.StreamCursor) as they are rendered,
    as many as `steps` batches on every worker need (one batch to spare each).
    Ray Data's streaming executor renders ahead only as far as its buffers allow, so the
    render actors neither run dry while the trainers wait nor fill memory ahead of them.
    The actors share the CPUs the workers leave (no read task: the rows, placeholders for
    the claimed indices, sit in memory)."""
    import numpy as np
    import ray.data

    from framecast.cluster import total_cpus
    from jobs.stream_cursor import ClaimFrom

    config, render = plan.config, plan.manifest.config
    count = (config.steps + 1) * config.batch_size * config.workers
    spare = max(total_cpus() - worker_cpus * config.workers, 0.1)
    return ray.data.from_numpy(np.arange(count, dtype=np.int64)).map_batches(
        fdata.StreamRenderer,
        fn_constructor_kwargs={"config": to_dict(render), "claim": ClaimFrom(cursor)},
        compute=ray.data.ActorPoolStrategy(size=config.stream_actors),
        num_cpus=round(max(0.05, spare / config.stream_actors), 3),
        batch_size=config.batch_size, batch_format="numpy")


def fit(plan: TrainPlan, run_id: str, *, callbacks: Sequence[Any] = (), threads: int = 0
        ) -> Any:
    """Train `plan` with Ray Train in the Ray the caller started or joined (no ray.init here);
    the chief worker logs metrics into the caller's MLflow run `run_id`; `callbacks` are Ray
    Train callbacks (a Tune trial passes Tune's report callback). `threads`: torch threads per
    worker (0: the cluster's CPUs shared by the workers; Tune trials running side by side pass
    their share). Returns the last checkpoint (a ray.train.Checkpoint)."""
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from framecast import tracking
    from framecast.cluster import total_cpus, worker_cpus
    from framecast.heap import worker_env

    config = plan.config
    cpus = worker_cpus(config.workers, config.cpus_per_worker, floor=0.25)
    # A worker's `ray.train.report` waits until the controller has collected the previous one,
    # and the controller collects when it polls (every 2 s by default): with a report every
    # step or few, the poll set the pace (2.6 s per step of a tiny model). Trainer
    # passes this variable on to its controller; a value the user set wins.
    os.environ.setdefault(REPORT_POLL_ENV, REPORT_POLL_S)
    # Training shows its own progress per step; Ray Data's bars from every worker are noise.
    ray.data.DataContext.get_current().enable_progress_bars = False
    counts = plan.manifest.counts
    steps_per_epoch = max(1, counts["train"] // (config.batch_size * config.workers))
    cursor = stream_cursor(plan) if config.stream else None
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "job": to_dict(config), "run_id": run_id, "model": plan.model,
            "components": plan.components,
            "entry": _shippable(registry.entry(config.model)),
            "tracking_uri": tracking.default_tracking_uri(),
            "eval_every": config.eval_every or steps_per_epoch,
            "threads": threads or max(1, total_cpus() // config.workers),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.use_gpu else {}),
                                  **config.extra_resources},
            placement_strategy=config.placement),
        run_config=ray.train.RunConfig(
            name=plan.name, storage_path=str(plan.storage), callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # the loop runs in a thread Ray starts first: malloc set from the process's start
            worker_runtime_env={"env_vars": worker_env()}),
        datasets={"train": stream_dataset(plan, cpus, cursor) if cursor else
                  fdata.load_ray_dataset(config.data, "train", ("index", "frames"))},
    )
    try:
        with ctrl_c_reaches_the_job():
            result = trainer.fit()
    finally:
        if cursor:
            ray.kill(cursor)
    if result.checkpoint is None:
        raise RuntimeError(f"training run {plan.name} produced no checkpoint")
    return result.checkpoint


def train(config: TrainJobConfig) -> dict:
    """Train, evaluate, log and register; returns {'run_id', 'model_uri', 'metrics', ...}."""
    from framecast import tracking
    from framecast.cluster import check_gpus, init_ray, worker_cpus

    checked = plan(config)  # before Ray and MLflow: a bad flag leaves nothing behind
    if checked.registered_name:
        tracking.check_register_precision(checked.registered_name, "fp32")
    resumed = tracking.find_run(config.experiment, tracking.RAY_RUN_TAG, checked.name)
    if resumed:
        check_resumable(checked, resumed)
    init_ray()
    worker_cpus(config.workers, config.cpus_per_worker, floor=0.25)  # before the MLflow run
    if config.use_gpu:
        check_gpus(config.workers)
    check_storage("train", [config.data], checked.storage, config.experiment)
    if resumed:
        print(f"train: resuming run {checked.name} (MLflow run {resumed})")
    with train_run(checked, run_id=resumed) as run:
        return fit_and_finish(checked, run.info.run_id)


def check_resumable(checked: TrainPlan, run_id: str) -> None:
    """Refuse (ConfigError, one line) resuming run `run_id` (found by --name) with another model
    than it trains: its checkpoint would not load, and the failure would mark it FAILED."""
    import mlflow

    had = mlflow.MlflowClient().get_run(run_id).data.params
    now = {k: str(v) for k, v in checked.params.items() if k == "model" or k.startswith("model.")}
    changed = sorted(k for k, v in now.items() if k in had and had[k] != v)
    if changed:
        key = changed[0]
        raise ConfigError(f"--name {checked.name} resumes MLflow run {run_id}, which trains "
                          f"{key}={had[key]}, not {now[key]}"
                          + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
                          + "; give the same model flags to resume it, or a new --name")


@contextlib.contextmanager
def train_run(checked: TrainPlan, *, run_name: str = "", run_id: str | None = None,
              params: dict[str, Any] | None = None, tags: dict[str, str] | None = None
              ) -> Iterator[Any]:
    """The MLflow run of one training, whichever job starts it (jobs.train, a comparison's
    entrant, a Tune trial): tagged with its Ray run name and its model, by which a rerun finds
    it; `run_id` resumes that run."""
    with tracking.job_run("train", experiment=checked.config.experiment,
                          run_name=run_name or checked.name, run_id=run_id,
                          params=checked.params if params is None else params,
                          tags={tracking.RAY_RUN_TAG: checked.name,
                                tracking.MODEL_TAG: checked.config.model, **(tags or {})}) as run:
        yield run


def fit_and_finish(checked: TrainPlan, run_id: str, *, callbacks: Sequence[Any] = (),
                   threads: int = 0, follow: bool = True, model: Any = None) -> dict:
    """Train on Ray Train and log the model in the run `run_id` (`fit`, then `finish`, which
    loads the weights into `model` when given): the one training path of every job. The driver
    prints the workers' progress unless `follow=False` (a Tune trial reports to Tune
    instead)."""
    headline = registry.entry(checked.config.model).model_class.headline
    progress = (follow_run(run_id, checked.config.steps, headline) if follow
                else contextlib.nullcontext())
    with progress:
        checkpoint = fit(checked, run_id, callbacks=callbacks, threads=threads)
    return finish(checked, run_id, checkpoint, model)


def check_storage(job: str, data: Sequence[str], storage: Path, experiment: str) -> None:
    """On a cluster of more than one node: refuse (ConfigError) unless the data sets, the Ray
    Train/Tune `storage` (created here) and the local MLflow store are the same folders on every
    node, before any work starts. Workers read the data and write checkpoints and metrics from
    any node; a path only the head sees would fail at the first checkpoint."""
    from framecast import tracking
    from framecast.cluster import check_shared_paths

    storage.mkdir(parents=True, exist_ok=True)
    paths = {("--data" if i == 0 else f"--data ({i + 1})"): d for i, d in enumerate(data)}
    paths.update({"--storage": storage, **tracking.worker_folders(experiment)})
    nodes = check_shared_paths(paths)
    if nodes > 1:
        print(f"{job}: {', '.join(paths)} shared by all {nodes} nodes")


@contextlib.contextmanager
def follow_run(run_id: str, steps: int, headline: Sequence[str] = ("psnr", "ssim"),
               every_s: float = 2.0) -> Iterator[None]:
    """Print one line per logged step of the MLflow run `run_id` while the block runs: the
    workers log their metrics there, so the driver shows progress without Ray's worker output.
    Steps with a val evaluation add the model's `headline` metrics (and copy-last's beside)."""
    import mlflow

    client, stop, shown = mlflow.MlflowClient(), threading.Event(), set()
    keys = [f"val_{k}{suffix}" for k in headline for suffix in ("", "_copy_last")]

    def show_new() -> None:
        try:
            losses = client.get_metric_history(run_id, "loss")
            vals = {(m.key, m.step): m.value for key in keys
                    for m in client.get_metric_history(run_id, key)}
        except mlflow.exceptions.MlflowException:
            return  # the store is busy: next time
        for m in sorted(losses, key=lambda m: m.step):
            if m.step in shown:
                continue
            shown.add(m.step)
            print(f"train: step {m.step}/{steps} loss {m.value:.4f}"
                  + _headline(headline, {k: v for (k, s), v in vals.items() if s == m.step}),
                  flush=True)

    def loop() -> None:
        while not stop.wait(every_s):
            show_new()

    thread = threading.Thread(target=loop, name="follow-run", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        show_new()


def _headline(names: Sequence[str], values: dict[str, float], prefix: str = "val_") -> str:
    """'  val PSNR 19.37 (copy-last 18.19), SSIM 0.893 (copy-last 0.871)' from the metrics."""
    parts = []
    for name in names:
        if f"{prefix}{name}" not in values:
            continue
        text = f"{name.upper() if len(name) <= 4 else name} {_num(values[prefix + name])}"
        if f"{prefix}{name}_copy_last" in values:
            text += f" (copy-last {_num(values[prefix + name + '_copy_last'])})"
        parts.append(text)
    return ("  " + prefix.rstrip("_") + " " + ", ".join(parts)) if parts else ""


def _num(value: float) -> str:
    return f"{value:.2f}" if abs(value) >= 10 else f"{value:.3f}"


def finish(plan: TrainPlan, run_id: str, checkpoint: Any, model: Any = None) -> dict:
    """Evaluate the final checkpoint on the val split, log metrics, figure and model into the
    active MLflow run `run_id`, register it. `model`: an instance of the plan's model to load
    the checkpoint into (default: `plan.build()`)."""
    import mlflow

    from framecast import model_io
    from framecast.predict import adopt_best_decode, describe_decode_choice
    from framecast.train import load_checkpoint

    config, manifest = plan.config, plan.manifest
    model = plan.build() if model is None else model
    with checkpoint.as_directory() as d:
        step = load_checkpoint(d, model)
    val, _ = fdata.load_numpy(config.data, "val")
    if not len(val):
        val, _ = fdata.load_numpy(config.data, "test")
    if hasattr(model.cfg, "decode") and "decode" not in config.overrides:
        # A frame predictor reads its predictions the way that scores best on val (the trimmed
        # mean helps 2D triangles, the plain mean 3D polycubes); --model-config decode=X fixes it.
        best, psnr = adopt_best_decode(model, val, batch_size=config.batch_size)
        mlflow.set_tag(tracking.DECODE_TAG, best)  # a tag: a resumed run may choose anew
        mlflow.log_metrics({f"final_val_psnr_{d}": v for d, v in psnr.items()}, step=step)
        print(f"train: {describe_decode_choice(best, psnr)}")
    summary = {f"val_{k}": v for k, v in model.eval().evaluate(val, config.batch_size).items()}
    registered = plan.registered_name
    mlflow.log_metrics({f"final_{k}": v for k, v in summary.items()}, step=step)
    log_prediction_figure(model, val[0], title=f"{plan.name} step {step}")
    info = model_io.log_model(model, config.model, registered_name=registered,
                              extra={"preset": config.preset, "data": str(config.data),
                                     "data_kind": manifest.config.kind,
                                     "frame_shape": list(manifest.config.frame_shape),
                                     "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                   for k, v in config.overrides.items()},
                                     "step": step})
    uri, version = info.model_uri, info.registered_model_version
    print(f"train: step {step};" + _headline(model.headline, summary).replace("  val", " val"))
    print(f"train: MLflow run {run_id}; model {uri}"
          + (f" registered as {registered} v{version}" if registered else ""))
    return {"run_id": run_id, "name": plan.name, "model_uri": uri, "registered": registered,
            "version": version, "step": step, "metrics": summary}


def main(argv: list[str] | None = None) -> int:
    return run_job("train", TrainJobConfig, train, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
