"""Plumbing every job shares: parse the config, turn user errors into one clear line."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from framecast.config import ConfigError, parse_args
from framecast.data import DatasetError

T = TypeVar("T")

# Errors that mean "the user asked for something that cannot be done": one line, exit code 2.
USER_ERRORS = (ConfigError, DatasetError, FileNotFoundError, ValueError)


def run_job(name: str, cls: type[T], main: Callable[[T], object], argv: list[str] | None,
            description: str, epilog: str = "") -> int:
    prog = f"python -m jobs.{name}"
    config = parse_args(cls, argv, description=description, epilog=epilog, prog=prog)
    try:
        main(config)
    except USER_ERRORS as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return 0


def log_prediction_figure(model, video, title: str = "") -> None:
    """Log figures/prediction.png (truth / prediction / entropy, as in the V-BLT paper's figures
    7-8) for one uint8 video (T, H, W, C) to the active MLflow run."""
    from framecast import tracking, viz
    from framecast.predict import predict

    k = model.context_frames
    pred, entropy, _ = predict(model, video[None])
    figure = viz.prediction_figure(video[k:], pred[0], entropy[0], title=title)
    tracking.log_file_bytes(figure, "figures", "prediction.png")


def load_logged_model(ref: str):
    """`framecast.model_io.load_logged_model` with a one-line error naming the store when MLflow
    does not know `ref`. Returns (model, meta)."""
    import mlflow

    from framecast import model_io, tracking

    try:
        return model_io.load_logged_model(ref)
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"--model {ref!r} not found in MLflow "
                         f"({tracking.default_tracking_uri()}): {err.message[:200]}") from None
