"""The end-to-end pipeline: `make demo` runs this with its defaults.

    python -m jobs.pipeline                    # demo preset: minutes on 2 CPU cores
    ray job submit --working-dir . -- python -m jobs.pipeline --preset paper --data-dir /shared/data

Stages so far: render the 2D-triangle and 3D-polycube data sets (reused when already there).
Every stage logs a child run under one MLflow parent run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from framecast.config import ConfigError, flat_params, project_home
from jobs.common import run_job
from jobs.render import RenderJobConfig, render

# Scale per preset: sequences per data set and frame size. `paper`: 12 frames of 64x64 as in the
# V-BLT paper (its data set size is not given; 10k sequences is our choice).
PRESETS = {
    "demo": {"num_sequences": 160, "frames": 12, "size": 64},
    "paper": {"num_sequences": 10_000, "frames": 12, "size": 64},
}


@dataclass(frozen=True)
class PipelineConfig:
    preset: Literal["demo", "paper"] = field(
        default="demo", metadata={"help": "scale: demo (minutes on 2 CPU cores) or paper"})
    data_dir: str = field(default="", metadata={
        "help": "where the data sets are written (default: $FRAMECAST_HOME/data)"})
    workers: int = field(default=2, metadata={"help": "Ray Data rendering actors"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})

    def __post_init__(self) -> None:
        if self.workers <= 0:
            raise ConfigError(f"workers={self.workers} must be a positive integer")


def render_configs(config: PipelineConfig) -> list[RenderJobConfig]:
    scale = PRESETS[config.preset]
    data_dir = Path(config.data_dir) if config.data_dir else project_home() / "data"
    return [
        RenderJobConfig(kind=kind, seed=config.seed, workers=config.workers,
                        out=str(data_dir / f"{kind}-{config.preset}-s{config.seed}"),
                        experiment=config.experiment, **scale)
        for kind in ("2d", "3d")
    ]


def pipeline(config: PipelineConfig) -> dict[str, str]:
    """Run every stage under one MLflow parent run; returns {stage: child run id or note}."""
    import mlflow

    from framecast import tracking

    tracking.use_experiment(config.experiment)
    done: dict[str, str] = {}
    with mlflow.start_run(run_name=f"pipeline-{config.preset}") as parent:
        mlflow.set_tag("framecast.job", "pipeline")
        tracking.log_params(flat_params(config))
        for render_config in render_configs(config):
            result = render(render_config)
            done[f"render-{render_config.kind}"] = result.run_id or f"reused {result.out}"
            mlflow.set_tag(f"framecast.dataset.{render_config.kind}", str(result.out))
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
