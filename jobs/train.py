"""Train a video-prediction model with Ray Train; log everything to MLflow.

    python -m jobs.train --model vblt --preset small --data data/2d-demo-s0 --steps 300 --workers 2
    ray job submit --working-dir . -- python -m jobs.train --data /shared/data/tri --preset paper

Each worker reads its shard of the data set's train split (a Ray Dataset) and runs the plain
PyTorch loop in `framecast.train`; GPU workers train in bf16 autocast. Checkpoints go through
`ray.train.report`: a worker failure retries from the last one (`--max-failures`), and rerunning
with the same `--name` resumes a killed run with the same step count and optimizer state, logging
into the same MLflow run. At the end the model is evaluated on the val split against
copy-last-frame, a figure (truth / prediction / entropy) is logged, and the model is logged and
registered in MLflow.
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from framecast.config import ConfigError, flat_params, project_home, to_dict
from framecast.train import OptimConfig
from jobs.common import log_prediction_figure, run_job


@dataclass(frozen=True)
class TrainJobConfig(OptimConfig):
    data: str = field(default="", metadata={"help": "data set folder from jobs.render (required)"})
    model: str = field(default="vblt", metadata={"help": "model name in the registry"})
    preset: str = field(default="small", metadata={
        "help": "model preset: tiny, small, demo, paper"})
    workers: int = field(default=1, metadata={"help": "Ray Train workers (data parallel)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker, bf16 autocast"})
    cpus_per_worker: float = field(default=0.0, metadata={
        "help": "CPUs reserved per worker; 0 = auto (leaves room for Ray Data's read tasks)"})
    eval_every: int = field(default=0, metadata={
        "help": "steps between val evaluations during training; 0 = once per epoch"})
    eval_sequences: int = field(default=16, metadata={
        "help": "val sequences used by those evaluations (the final one uses the whole split)"})
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
        for name in ("steps", "batch_size", "workers", "log_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.lr <= 0 or self.warmup_steps < 0 or self.eval_every < 0:
            raise ConfigError("lr must be > 0; warmup_steps and eval_every must be >= 0")


def train_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: build, maybe restore, train, report."""
    import itertools
    import time

    import mlflow
    import ray.train
    import ray.train.torch
    import torch
    from mlflow.entities import Metric

    from framecast import data as fdata
    from framecast.config import from_dict
    from framecast.models import create
    from framecast.predict import evaluate, flat_summary
    from framecast.train import load_checkpoint, make_optimizer, train_loop

    config = from_dict(TrainJobConfig, loop_config["job"])
    ctx = ray.train.get_context()
    chief = ctx.get_world_rank() == 0
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, int(loop_config["threads"])))
    model = create(config.model, config.preset, channels=loop_config["channels"])
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, config)
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            start = load_checkpoint(d, model, optimizer)
        print(f"train: worker {ctx.get_world_rank()} resumed at step {start}")

    shard = ray.train.get_dataset_shard("train")

    def batches():
        for epoch in itertools.count():  # epochs until the step budget is spent
            for batch in shard.iter_torch_batches(batch_size=config.batch_size, drop_last=True,
                                                  local_shuffle_buffer_size=4 * config.batch_size,
                                                  local_shuffle_seed=config.seed + epoch):
                yield batch["frames"]

    val = fdata.load_numpy(config.data, "val")[0][:config.eval_sequences] if chief else None
    client = mlflow.MlflowClient(loop_config["tracking_uri"]) if chief else None

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        if chief:  # the driver prints progress from these (`follow_run`)
            step = int(metrics["step"])
            now = int(time.time() * 1000)
            client.log_batch(loop_config["run_id"], metrics=[
                Metric(k, float(v), now, step) for k, v in metrics.items() if k != "step"])
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def evaluate_val(m):
        return flat_summary(evaluate(m, val, batch_size=config.batch_size)) if len(val) else {}

    train_loop(model, optimizer, batches(), config, report, start_step=start, device=device,
               bf16=device.type == "cuda", is_chief=chief, evaluate=evaluate_val,
               eval_every=loop_config["eval_every"])


def _mlflow_run(config: TrainJobConfig, name: str) -> str:
    """The MLflow run of this Ray run: reused when resuming (same name), else created."""
    import mlflow

    from framecast import tracking

    experiment_id = tracking.use_experiment(config.experiment)
    found = mlflow.search_runs([experiment_id], f"tags.`framecast.ray_run` = '{name}'",
                               output_format="list")
    if found:
        print(f"train: resuming run {name} (MLflow run {found[0].info.run_id})")
        mlflow.MlflowClient().update_run(found[0].info.run_id, status="RUNNING")
        tracking.remember_run(found[0].info.run_id)
        return found[0].info.run_id
    run = mlflow.MlflowClient().create_run(experiment_id, run_name=name, tags={
        "framecast.job": "train", "framecast.ray_run": name, "framecast.model": config.model,
        **tracking.parent_tags()})
    tracking.remember_run(run.info.run_id)
    return run.info.run_id


def train(config: TrainJobConfig) -> dict:
    """Train, evaluate, log and register; returns {'run_id', 'model_uri', 'metrics', ...}."""
    import mlflow
    import ray.data
    import ray.train
    from ray.train.torch import TorchTrainer

    from framecast import data as fdata
    from framecast import tracking
    from framecast.cluster import init_ray, total_cpus, worker_cpus

    manifest = fdata.read_manifest(config.data)  # fails early, before Ray, on a bad folder
    if manifest.counts["train"] < config.batch_size * config.workers:
        raise ConfigError(f"the train split has {manifest.counts['train']} sequences, fewer than "
                          f"batch_size x workers = {config.batch_size * config.workers}")
    kind = manifest.config.kind
    name = config.name or (f"{config.model}-{config.preset}-{kind}-"
                           f"{datetime.datetime.now():%Y%m%d-%H%M%S}")
    storage = Path(config.storage).resolve() if config.storage else (
        project_home() / "ray_results")
    init_ray()
    cpus = worker_cpus(config.workers, config.cpus_per_worker, floor=0.25)  # checked before MLflow
    # Training shows its own progress per step; Ray Data's bars from every worker are noise.
    ray.data.DataContext.get_current().enable_progress_bars = False
    run_id = _mlflow_run(config, name)
    with tracking.start_run(run_id=run_id):
        try:
            tracking.log_params({**flat_params(config), "data_kind": kind,
                                 "data_sequences": manifest.config.num_sequences})
        except mlflow.exceptions.MlflowException:
            pass  # resuming: params were logged by the first attempt
    steps_per_epoch = max(1, manifest.counts["train"] // (config.batch_size * config.workers))
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={
            "job": to_dict(config), "run_id": run_id, "channels": manifest.config.channels,
            "tracking_uri": tracking.default_tracking_uri(),
            "eval_every": config.eval_every or steps_per_epoch,
            "threads": max(1, total_cpus() // config.workers),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.workers, use_gpu=config.use_gpu,
            resources_per_worker={"CPU": cpus, **({"GPU": 1} if config.use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=name, storage_path=str(storage),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
        datasets={"train": fdata.load_ray_dataset(config.data, "train", ("index", "frames"))},
    )
    with follow_run(run_id, config.steps):
        result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} produced no checkpoint")
    return finish(config, run_id, name, result.checkpoint, manifest)


@contextlib.contextmanager
def follow_run(run_id: str, steps: int, every_s: float = 2.0) -> Iterator[None]:
    """Print one line per logged step of the MLflow run `run_id` while the block runs: the
    workers log their metrics there, so the driver shows progress without Ray's worker output.
    """
    import mlflow

    client, stop, shown = mlflow.MlflowClient(), threading.Event(), set()

    def show_new() -> None:
        try:
            losses = client.get_metric_history(run_id, "loss")
            vals = {(m.key, m.step): m.value for key in ("val_psnr", "val_psnr_copy_last",
                                                         "val_ssim", "val_ssim_copy_last")
                    for m in client.get_metric_history(run_id, key)}
        except mlflow.exceptions.MlflowException:
            return  # the store is busy: next time
        for m in sorted(losses, key=lambda m: m.step):
            if m.step in shown:
                continue
            shown.add(m.step)
            line = f"train: step {m.step}/{steps} loss {m.value:.4f}"
            if ("val_psnr", m.step) in vals:
                v = {k: vals.get((k, m.step), float("nan")) for k, _ in vals}
                line += (f"  val PSNR {v['val_psnr']:.2f} dB (copy-last "
                         f"{v['val_psnr_copy_last']:.2f}), SSIM {v['val_ssim']:.3f} "
                         f"(copy-last {v['val_ssim_copy_last']:.3f})")
            print(line, flush=True)

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


def finish(config: TrainJobConfig, run_id: str, name: str, checkpoint, manifest) -> dict:
    """Evaluate the final checkpoint on the val split, log figure and model, register it."""
    import mlflow

    from framecast import data as fdata
    from framecast import model_io, tracking
    from framecast.models import create
    from framecast.predict import evaluate, flat_summary
    from framecast.train import load_checkpoint

    model = create(config.model, config.preset, channels=manifest.config.channels)
    with checkpoint.as_directory() as d:
        step = load_checkpoint(d, model)
    val, _ = fdata.load_numpy(config.data, "val")
    if not len(val):
        val, _ = fdata.load_numpy(config.data, "test")
    result = evaluate(model, val, batch_size=config.batch_size)
    summary = flat_summary(result)
    registered = None if config.register == "none" else (
        config.register or f"{config.model}-{manifest.config.kind}")
    with tracking.start_run(run_id=run_id):
        mlflow.log_metrics({f"final_{k}": v for k, v in summary.items()}, step=step)
        log_prediction_figure(model, val[0], title=f"{name} step {step}")
        info = model_io.log_model(model, config.model, registered_name=registered,
                                  extra={"preset": config.preset, "data": str(config.data),
                                         "frame_shape": list(manifest.config.frame_shape),
                                         "step": step})
    uri, version = info.model_uri, info.registered_model_version
    print(f"train: step {step}; val PSNR {summary['val_psnr']:.2f} dB "
          f"(copy-last {summary['val_psnr_copy_last']:.2f}), SSIM {summary['val_ssim']:.3f} "
          f"(copy-last {summary['val_ssim_copy_last']:.3f}), MSE {summary['val_mse']:.4f} "
          f"(copy-last {summary['val_mse_copy_last']:.4f})")
    print(f"train: MLflow run {run_id}; model {uri}"
          + (f" registered as {registered} v{version}" if registered else ""))
    return {"run_id": run_id, "name": name, "model_uri": uri, "registered": registered,
            "version": version, "step": step, "metrics": summary}


def main(argv: list[str] | None = None) -> int:
    return run_job("train", TrainJobConfig, train, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
