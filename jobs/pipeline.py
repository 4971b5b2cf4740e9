"""The end-to-end pipeline: `make demo` runs this with its defaults.

    python -m jobs.pipeline                    # demo preset: minutes on 2 CPU cores
    ray job submit --working-dir . -- python -m jobs.pipeline --preset paper --data-dir /shared/data

Stages so far: render the 2D-triangle and 3D-polycube data sets (reused when already there), train
V-BLT on each with Ray Train, evaluate it on the test split against copy-last-frame, quantize it to
mixed-precision W8A8 and register the result (`vblt-<kind>-int8`, alias `candidate`). Every
stage logs a child run under one MLflow parent run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from framecast.config import ConfigError, flat_params, project_home
from jobs.common import run_job
from jobs.evaluate import EvaluateConfig, evaluate_job
from jobs.quantize import QuantizeJobConfig, quantize
from jobs.render import RenderJobConfig, render
from jobs.train import TrainJobConfig, train

# Scale per preset. demo: 32x32 frames (the 256-way output per pixel makes 64x64 slow on a CPU).
# paper: 12 frames of 64x64 and the paper's model (its data set size is not given; 10k is ours).
PRESETS = {
    "demo": {"render": {"num_sequences": 240, "frames": 12, "size": 32},
             "train": {"preset": "small", "steps": 120, "batch_size": 8, "checkpoint_every": 60},
             "quantize": {"stage_steps": 10, "final_steps": 20}},
    "paper": {"render": {"num_sequences": 10_000, "frames": 12, "size": 64},
              "train": {"preset": "paper", "steps": 20_000, "batch_size": 16,
                        "checkpoint_every": 1000, "lr": 1e-3},
              "quantize": {"stage_steps": 100, "final_steps": 300, "batch_size": 16}},
}


@dataclass(frozen=True)
class PipelineConfig:
    preset: Literal["demo", "paper"] = field(
        default="demo", metadata={"help": "scale: demo (minutes on 2 CPU cores) or paper"})
    data_dir: str = field(default="", metadata={
        "help": "where the data sets are written (default: $FRAMECAST_HOME/data)"})
    workers: int = field(default=2, metadata={"help": "Ray Data rendering actors"})
    train_workers: int = field(default=1, metadata={"help": "Ray Train workers"})
    train_steps: int = field(default=0, metadata={"help": "training steps (0: the preset's)"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})

    def __post_init__(self) -> None:
        if self.workers <= 0 or self.train_workers <= 0 or self.train_steps < 0:
            raise ConfigError("workers and train_workers must be positive, train_steps >= 0")


def render_configs(config: PipelineConfig) -> list[RenderJobConfig]:
    scale = PRESETS[config.preset]["render"]
    data_dir = Path(config.data_dir) if config.data_dir else project_home() / "data"
    return [
        RenderJobConfig(kind=kind, seed=config.seed, workers=config.workers,
                        out=str(data_dir / f"{kind}-{config.preset}-s{config.seed}"),
                        experiment=config.experiment, **scale)
        for kind in ("2d", "3d")
    ]


def train_config(config: PipelineConfig, data: Path, parent_run_id: str) -> TrainJobConfig:
    import ray

    preset = dict(PRESETS[config.preset]["train"])
    if config.train_steps:
        preset["steps"] = config.train_steps
    return TrainJobConfig(
        data=str(data), model="vblt", workers=config.train_workers, seed=config.seed,
        use_gpu=ray.cluster_resources().get("GPU", 0) > 0, experiment=config.experiment,
        name=f"vblt-{data.name}-{parent_run_id[:8]}", **preset)


def pipeline(config: PipelineConfig) -> dict[str, str]:
    """Run every stage under one MLflow parent run; returns {stage: child run id or note}."""
    import mlflow

    from framecast import tracking
    from framecast.cluster import init_ray

    tracking.use_experiment(config.experiment)
    init_ray()
    done: dict[str, str] = {}
    with mlflow.start_run(run_name=f"pipeline-{config.preset}") as parent:
        mlflow.set_tag("framecast.job", "pipeline")
        tracking.log_params(flat_params(config))
        for render_config in render_configs(config):
            kind = render_config.kind
            result = render(render_config)
            done[f"render-{kind}"] = result.run_id or f"reused {result.out}"
            mlflow.set_tag(f"framecast.dataset.{kind}", str(result.out))
            trained = train(train_config(config, result.out, parent.info.run_id))
            done[f"train-{kind}"] = trained["run_id"]
            evaluated = evaluate_job(EvaluateConfig(model=trained["model_uri"],
                                                    data=str(result.out), split="test",
                                                    experiment=config.experiment))
            done[f"evaluate-{kind}"] = evaluated["run_id"]
            summary = evaluated["summary"]
            mlflow.log_metrics({f"{kind}_test_psnr": summary["test_psnr"],
                                f"{kind}_test_psnr_copy_last": summary["test_psnr_copy_last"]})
            quantized = quantize(QuantizeJobConfig(
                model=trained["model_uri"], data=str(result.out), seed=config.seed,
                experiment=config.experiment, **PRESETS[config.preset]["quantize"]))
            done[f"quantize-{kind}"] = (f"{quantized['run_id']} -> {quantized['registered']}"
                                        f" v{quantized['version']}")
            mlflow.log_metrics({f"{kind}_{k}": quantized["metrics"][k]
                                for k in ("size_ratio", "speedup_b1", "speedup_b8",
                                          "psnr_drop_db")})
    print("\npipeline: done")
    for stage, what in done.items():
        print(f"  {stage:12s} {what}")
    print(f"  parent run   {parent.info.run_id}")
    print(f"  browse with: {tracking.ui_command()}")
    return done


def main(argv: list[str] | None = None) -> int:
    return run_job("pipeline", PipelineConfig, pipeline, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
