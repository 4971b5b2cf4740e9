"""Plumbing every job shares: parse the config, turn user errors into one clear line."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from framecast.config import ConfigError, parse_args
from framecast.data import DatasetError

T = TypeVar("T")

# Errors that mean "the user asked for something that cannot be done": one line, exit code 2.
USER_ERRORS = (ConfigError, DatasetError, FileNotFoundError, ValueError)


class Stopped(KeyboardInterrupt):
    """SIGTERM (what `ray job stop` sends), handled like Ctrl-C."""


def _stop(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def run_job(name: str, cls: type[T], main: Callable[[T], object], argv: list[str] | None,
            description: str, epilog: str = "") -> int:
    """Parse the config and run `main`; every MLflow run the job opened ends with its true
    state: FINISHED, KILLED after Ctrl-C/SIGTERM, FAILED after an error."""
    prog = f"python -m jobs.{name}"
    config = parse_args(cls, argv, description=description, epilog=epilog, prog=prog,
                        verbose_flag=True)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        main(config)
    except USER_ERRORS as err:
        _end_runs("FAILED", prog)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        _end_runs("KILLED", prog)
        print(f"{prog}: {'stopped by ' + str(err) if isinstance(err, Stopped) else 'interrupted'}",
              file=sys.stderr)
        return 130
    except BaseException:
        _end_runs("FAILED", prog)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _end_runs(status: str, prog: str) -> None:
    from framecast import tracking

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    try:
        ended = tracking.end_open_runs(status)
    except Exception as err:  # the store is gone: the job's own error matters more
        print(f"{prog}: could not mark MLflow runs {status}: {err}", file=sys.stderr)
        return
    if ended:
        print(f"{prog}: MLflow runs marked {status}: {', '.join(ended)}", file=sys.stderr)


def log_prediction_figure(model, video, title: str = "") -> None:
    """Log the model's figure of one uint8 video (T, H, W, C) to the active MLflow run as
    figures/prediction.png (a frame predictor's: truth / prediction / entropy, as in the V-BLT
    paper's figures 7-8); nothing for a model that draws none."""
    from framecast import tracking

    figure = model.figure(video, title=title)
    if figure is not None:
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
