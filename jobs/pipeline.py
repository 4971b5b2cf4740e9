"""The end-to-end pipeline: `make demo` runs this with its defaults.

    python -m jobs.pipeline                    # demo preset: minutes on 2 CPU cores
    ray job submit --working-dir . -- python -m jobs.pipeline --preset paper --data-dir /shared/data

Stages: render the 2D-triangle and 3D-polycube data sets (reused when already there), train
V-BLT on each with Ray Train, evaluate it on the test split against copy-last-frame, quantize it to
mixed-precision W8A8 and register the result (`vblt-<kind>-int8`, alias `candidate`). On the 2D
data also (`--nbp`, on by default): an FSQ tokenizer and an NBP generator trained on its tokens,
test clips continued, the generator quantized (jobs/pipeline_nbp.py). Last, every quantized model
is deployed in one Ray Serve app and answers one HTTP request (/predict, /generate). Every stage
logs a child run under one MLflow parent run; a rerun reuses finished stages with the same inputs
and says so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from framecast.config import ConfigError, flat_params, project_home
from framecast.models import registry
from jobs.common import run_job
from jobs.evaluate import EvaluateConfig, evaluate_job
from jobs.pipeline_nbp import GeneratorRow, generator_table, log_served_generation, nbp_stages
from jobs.pipeline_stages import (
    FRAME_MODEL,
    GENERATOR,
    GENERATOR_DATA,
    PRESETS,
    quantize_stage,
    reuse_or_run,
    shown,
    train_stage,
    with_summary_as_metrics,
)
from jobs.quantize import QuantizeJobConfig
from jobs.render import RenderJobConfig, render
from jobs.serve import smoke_many
from jobs.train import TrainJobConfig


@dataclass(frozen=True)
class PipelineConfig:
    preset: Literal["demo", "paper", "smoke"] = field(
        default="demo", metadata={"help": "scale: demo (minutes on 2 CPU cores), paper (the "
                                          "paper's sizes, for GPUs) or smoke (seconds: wiring)"})
    data_dir: str = field(default="", metadata={
        "help": "where the data sets are written (default: $FRAMECAST_HOME/data)"})
    workers: int = field(default=2, metadata={"help": "Ray Data rendering actors"})
    train_workers: int = field(default=1, metadata={"help": "Ray Train workers"})
    train_steps: int = field(default=0, metadata={"help": "training steps (0: the preset's)"})
    model_config: str = field(default="", metadata={
        "help": "override V-BLT fields of the preset: KEY=VALUE[,KEY=VALUE...], tuples written "
                "1x4x4 (see python -m jobs.train --help)"})
    nbp: bool = field(default=True, metadata={
        "help": "also train an FSQ tokenizer and an NBP generator on the 2D data, continue test "
                "clips, quantize the generator and serve one /generate request (--nbp false "
                "skips it)"})
    seed: int = field(default=0, metadata={"help": "seed of every stage"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})

    def __post_init__(self) -> None:
        if self.workers <= 0 or self.train_workers <= 0 or self.train_steps < 0:
            raise ConfigError("workers and train_workers must be positive, train_steps >= 0")
        # The model against the frames this preset renders: refused before anything starts.
        scale = PRESETS[self.preset]["render"]
        registry.model_config(FRAME_MODEL, PRESETS[self.preset]["train"]["preset"],
                              frame_shape=(scale["frames"], scale["size"], scale["size"], 1),
                              **registry.parse_overrides(FRAME_MODEL, self.model_config))


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
        data=str(data), model=FRAME_MODEL, workers=config.train_workers, seed=config.seed,
        model_config=config.model_config,
        use_gpu=ray.cluster_resources().get("GPU", 0) > 0, experiment=config.experiment,
        name=f"{FRAME_MODEL}-{data.name}-{parent_run_id[:8]}", **preset)


@dataclass(frozen=True)
class SummaryRow:
    """What the pipeline made from one data set: the closing table's row."""
    kind: str
    data: str
    counts: dict[str, int]
    model: str  # registered fp32 model and version
    int8: str  # registered W8A8 model and version
    psnr: float
    psnr_copy: float
    ssim: float
    ssim_copy: float
    size_ratio: float
    speedup_b1: float
    psnr_drop_db: float
    serve_ms: float  # filled by the Serve stage at the end
    figure: str


def summary_table(rows: list[SummaryRow]) -> str:
    """The table `make demo` ends with: one row per data set, model against copy-last-frame."""
    header = ("data", "sequences", "model", "test PSNR (copy-last)", "test SSIM (copy-last)",
              "W8A8 model", "size", "speed b1", "PSNR drop", "Serve")
    lines = [[f"{r.kind}", "/".join(str(r.counts.get(s, 0)) for s in ("train", "val", "test")),
              r.model, f"{r.psnr:.2f} ({r.psnr_copy:.2f})", f"{r.ssim:.3f} ({r.ssim_copy:.3f})",
              r.int8, f"{r.size_ratio:.2f}x smaller", f"{r.speedup_b1:.2f}x",
              f"{r.psnr_drop_db:+.2f} dB", f"{r.serve_ms:.0f} ms"] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, strict=True)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*line) for line in lines]
    out.append("sequences = train/val/test; speed b1 = W8A8 latency speed-up at batch 1; "
               "Serve = one HTTP predict.")
    out += [f"{r.kind} data: {r.data}; prediction figure (truth / prediction / entropy): "
            f"{r.figure}" for r in rows]
    # Said plainly: a row under copy-last-frame is a model that has not learned the motion yet
    # (the demo's 3D at 16x16: benchmarks/RESULTS.md has the lr and steps probe).
    out += [f"{r.kind}: the model is under copy-last-frame here (PSNR {r.psnr - r.psnr_copy:+.2f} "
            f"dB, SSIM {r.ssim - r.ssim_copy:+.3f}): this budget has not taught it the data's "
            "motion; train longer, on larger frames, or a larger preset"
            for r in rows if r.psnr < r.psnr_copy or r.ssim < r.ssim_copy]
    return "\n".join(out)


def frame_model_stages(config: PipelineConfig, kind_result, parent_run_id: str,
                       done: dict[str, str]) -> SummaryRow:
    """Train, evaluate and quantize the frame model on one data set, each stage reused when
    finished (`reuse_or_run`). Returns the row of the closing summary (its Serve latency still to
    come: `serve_all`)."""
    import mlflow

    from framecast import tracking

    kind, data = kind_result.manifest.config.kind, str(kind_result.out)
    checksums = kind_result.manifest.checksums
    exp = config.experiment

    # The frame model's keys are taken under the bare stage name (the data's checksums tell the
    # kinds apart), so that a rerun finds the runs already marked with them.
    trained = train_stage(f"train-{kind}", train_config(config, kind_result.out, parent_run_id),
                          checksums, done, key_name="train")
    model_uri = trained["model_uri"]

    key = tracking.stage_key("evaluate", model=model_uri, data=checksums, split="test")
    evaluated = reuse_or_run(
        f"evaluate-{kind}", key, exp, done, lambda: with_summary_as_metrics(evaluate_job(
            EvaluateConfig(model=model_uri, data=data, split="test", experiment=exp))))
    summary = evaluated["metrics"]
    mlflow.log_metrics({f"{kind}_test_psnr": summary["test_psnr"],
                        f"{kind}_test_psnr_copy_last": summary["test_psnr_copy_last"]})

    quantized = quantize_stage(
        f"quantize-{kind}", QuantizeJobConfig(model=model_uri, data=data, seed=config.seed,
                                              experiment=exp, **PRESETS[config.preset]["quantize"]),
        checksums, done, key_name="quantize")
    values = quantized["metrics"]
    mlflow.log_metrics({f"{kind}_{k}": values[k]
                        for k in ("size_ratio", "speedup_b1", "speedup_b8", "psnr_drop_db")})

    return SummaryRow(
        kind=kind, data=data, counts=dict(kind_result.manifest.counts),
        model=shown(trained) if trained.get("registered") else model_uri, int8=shown(quantized),
        psnr=summary["test_psnr"], psnr_copy=summary["test_psnr_copy_last"],
        ssim=summary["test_ssim"], ssim_copy=summary["test_ssim_copy_last"],
        size_ratio=values["size_ratio"], speedup_b1=values["speedup_b1"],
        psnr_drop_db=values["psnr_drop_db"], serve_ms=float("nan"),
        figure=tracking.artifact_path(evaluated["run_id"], "figures/prediction.png"))


def registered_name(model: str) -> str:
    """The registered name in a row's model, as `shown` writes it."""
    return model.split()[0]


def serve_all(rows: list[SummaryRow], nbp_row: GeneratorRow | None, nbp_data: str,
              done: dict[str, str]) -> tuple[list[SummaryRow], GeneratorRow | None]:
    """One Serve stage for every quantized model: one app, one HTTP request each (a Serve
    start and shutdown per model cost about 20 s each on 2 cores). Returns the rows with their
    Serve latency filled in."""
    import dataclasses

    import mlflow

    from framecast import data as fdata

    # (stage, model as the rows show it, data set of the clip it is asked about)
    asked = [(f"serve-{r.kind}", r.int8, r.data) for r in rows]
    if nbp_row is not None:
        asked.append((f"serve-{GENERATOR}", nbp_row.int8, nbp_data))
    stages = [stage for stage, _, _ in asked]
    items = [(registered_name(model), "candidate", fdata.load_numpy(data, "test")[0][0])
             for _, model, data in asked]
    print(f"pipeline: serve: {', '.join(i[0] for i in items)} in one app, one request each")
    served = smoke_many(items)
    for stage, out in zip(stages, served, strict=True):
        done[stage] = (f"{out['url']} answered in {out['request_ms']:.0f} ms "
                       f"(v{out['version']}, {out['precision']}; app removed)")
        key = stage.removeprefix("serve-") + "_serve"
        mlflow.log_metrics({f"{key}_request_ms": out["request_ms"],
                            f"{key}_deploy_s": out["deploy_s"]})
    rows = [dataclasses.replace(r, serve_ms=out["request_ms"])
            for r, out in zip(rows, served[:len(rows)], strict=True)]
    if nbp_row is not None:
        log_served_generation(items[-1][2], served[-1])
        nbp_row = dataclasses.replace(nbp_row, serve_ms=served[-1]["request_ms"])
    return rows, nbp_row


def pipeline(config: PipelineConfig) -> dict[str, str]:
    """Run every stage under one MLflow parent run; returns {stage: child run id or note} and,
    under "summary", the closing table."""
    import mlflow

    from framecast import tracking
    from framecast.cluster import init_ray

    init_ray()
    done: dict[str, str] = {}
    rows: list[SummaryRow] = []
    nbp_row, nbp_data = None, ""
    with tracking.job_run("pipeline", experiment=config.experiment,
                          run_name=f"pipeline-{config.preset}",
                          params=flat_params(config)) as parent:
        for render_config in render_configs(config):
            kind = render_config.kind
            result = render(render_config)
            done[f"render-{kind}"] = result.run_id or f"reused {result.out}"
            mlflow.set_tag(f"{tracking.DATASET_TAG}.{kind}", str(result.out))
            rows.append(frame_model_stages(config, result, parent.info.run_id, done))
            if config.nbp and kind == GENERATOR_DATA:
                nbp_data = str(result.out)
                nbp_row = nbp_stages(config.preset, nbp_data, result.manifest.checksums,
                                     config.seed, config.experiment, parent.info.run_id, done,
                                     config.train_workers)
        rows, nbp_row = serve_all(rows, nbp_row, nbp_data, done)
        table = summary_table(rows)
        if nbp_row is not None:
            table += "\n" + generator_table(nbp_row)
        tracking.log_file_bytes(table.encode(), "summary", "summary.txt")
    # The names registered above, the generator's included.
    models = ",".join(registered_name(r.int8) for r in [*rows, *([nbp_row] if nbp_row else [])])
    print("\npipeline: done")
    for stage, what in done.items():
        print(f"  {stage:12s} {what}")
    print(f"  parent run   {parent.info.run_id}\n")
    print(table)
    print("\nGo further:")
    print(f"  browse runs:  {tracking.ui_command()}")
    print(f"  serve:        python -m jobs.serve --model {models}   "
          "# then http://127.0.0.1:8000/docs")
    print("  train longer: python -m jobs.pipeline --train-steps 1000   # --preset paper on GPUs")
    done["summary"] = table
    return done


def main(argv: list[str] | None = None) -> int:
    return run_job("pipeline", PipelineConfig, pipeline, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
