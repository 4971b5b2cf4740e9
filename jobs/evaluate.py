"""Evaluate a logged model on a data split against copy-last-frame; print and log a table.

    python -m jobs.evaluate --model vblt-2d --data data/2d-demo-s0 --split test  # make demo data
    python -m jobs.evaluate --model runs:/<run_id>/model --data DIR      # or a bare run id

`--model` takes an MLflow run id, a `runs:/` or `models:/` URI, or a registered model name (its
newest version; `name@alias` for an alias).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from framecast.config import ConfigError, check_bounds, flat_params
from jobs.common import load_logged_model, log_prediction_figure, note_other_data_kind, run_job


@dataclass(frozen=True)
class EvaluateConfig:
    model: str = field(default="", metadata={"help": "run id, runs:/ or models:/ URI, or "
                                                     "registered name (required)"})
    data: str = field(default="", metadata={"help": "data set folder (required)"})
    split: Literal["train", "val", "test", "all"] = field(
        default="test", metadata={"help": "which split to evaluate"})
    limit: int = field(default=0, metadata={"help": "evaluate only the first N sequences (0: all)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})

    def __post_init__(self) -> None:
        if not self.model or not self.data:
            raise ConfigError("--model and --data are required")
        check_bounds(self, positive=("batch_size",), non_negative=("limit",))


def per_frame_rows(result: dict, context_frames: int) -> list[dict[str, float]]:
    """One row per predicted frame: model and copy-last MSE/PSNR/SSIM."""
    rows = []
    for j in range(len(result["model"]["mse"])):
        row = {"frame": context_frames + j}
        for who in ("model", "copy_last"):
            for metric in ("mse", "psnr", "ssim"):
                row[f"{metric}_{who}"] = float(result[who][metric][j])
        rows.append(row)
    return rows


def format_table(rows: list[dict[str, float]]) -> str:
    head = (f"{'frame':>5} | {'MSE':>7} {'PSNR':>6} {'SSIM':>6} | "
            f"{'copy-last MSE':>13} {'PSNR':>6} {'SSIM':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['frame']:>5} | {r['mse_model']:7.4f} {r['psnr_model']:6.2f} "
                     f"{r['ssim_model']:6.3f} | {r['mse_copy_last']:13.4f} "
                     f"{r['psnr_copy_last']:6.2f} {r['ssim_copy_last']:6.3f}")
    return "\n".join(lines)


def evaluate_job(config: EvaluateConfig) -> dict:
    """Score the model on the split: a frame predictor per predicted frame against
    copy-last-frame, any other family through its own `evaluate`."""
    import mlflow

    from framecast import data as fdata
    from framecast import tracking
    from framecast.models.contract import FramePredictor
    from framecast.predict import evaluate, flat_summary

    manifest = fdata.read_manifest(config.data)
    tracking.use_experiment(config.experiment)
    model, meta = load_logged_model(config.model)
    model.check_data(manifest.config.frame_shape)
    note_other_data_kind("evaluate", config.model, meta, manifest)
    videos, _ = fdata.load_numpy(config.data, config.split)
    if config.limit:
        videos = videos[:config.limit]
    if not len(videos):
        raise ConfigError(f"split {config.split!r} of {config.data} is empty")
    prefix = f"{config.split}_"
    print(f"evaluate: {meta['name']} on {len(videos)} {config.split} sequences of {config.data}")
    rows: list[dict[str, float]] = []
    if isinstance(model, FramePredictor):
        result = evaluate(model, videos, batch_size=config.batch_size)
        rows = per_frame_rows(result, model.context_frames)
        summary = flat_summary(result, prefix=prefix)
        print(format_table(rows))
    else:
        summary = {prefix + k: v for k, v in model.evaluate(videos, config.batch_size).items()}
    print("mean  | " + "  ".join(f"{k} {v:.4g}" for k, v in summary.items()))
    with tracking.job_run("evaluate", experiment=config.experiment,
                          run_name=f"evaluate-{meta['name']}-{config.split}",
                          params=flat_params(config),
                          tags={tracking.MODEL_REF_TAG: config.model}) as run:
        mlflow.log_metrics(summary)
        if rows:
            tracking.log_file_bytes(json.dumps(rows, indent=1).encode(), "evaluation",
                                    "per_frame.json")
        log_prediction_figure(model, videos[0])
    print(f"evaluate: logged MLflow run {run.info.run_id}")
    return {"run_id": run.info.run_id, "rows": rows, "summary": summary}


def main(argv: list[str] | None = None) -> int:
    return run_job("evaluate", EvaluateConfig, evaluate_job, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
