"""Plumbing every job shares: parse the config, turn user errors into one clear line."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TypeVar

from framecast.config import ConfigError, parse_args
from framecast.data import DatasetError
from framecast.heap import keep_freed_memory

T = TypeVar("T")

# Errors that mean "the user asked for something that cannot be done": one line, exit code 2.
USER_ERRORS = (ConfigError, DatasetError, FileNotFoundError, ValueError)


class Stopped(KeyboardInterrupt):
    """SIGTERM (what `ray job stop` sends), handled like Ctrl-C."""

    received = ""  # the signal's name once `_stop` ran; `report`: what it did to the runs
    report = ""


def _stop(signum: int, _frame: object) -> None:
    # The runs are ended KILLED here, first, not once the exception has unwound: `ray job stop`
    # SIGKILLs the driver 3 s after its SIGTERM, and unwinding can take longer (Ray Train's
    # threads, ray.shutdown at exit). A `ray.get` (Ray Train's fit) runs this handler at its
    # periodic signal check but re-raises a plain KeyboardInterrupt: `received` keeps the name.
    Stopped.received = signal.Signals(signum).name
    Stopped.report = _end_runs("KILLED")  # printed by run_job: no I/O inside a signal handler
    raise Stopped(Stopped.received)


def run_job(name: str, cls: type[T], main: Callable[[T], object], argv: list[str] | None,
            description: str, epilog: str = "") -> int:
    """Parse the config and run `main`; every MLflow run the job opened ends with its true
    state: FINISHED, KILLED after Ctrl-C/SIGTERM, FAILED after an error."""
    prog = f"python -m jobs.{name}"
    config = parse_args(cls, argv, description=description, epilog=epilog, prog=prog,
                        verbose_flag=True)
    Stopped.received = Stopped.report = ""
    keep_freed_memory()  # for the job's own model work (scoring, timing): framecast.heap
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        main(config)
        if Stopped.received:  # the handler's exception was caught on the way (by Ray, say)
            raise Stopped(Stopped.received)
    except USER_ERRORS as err:
        if note := _end_runs("FAILED"):
            print(f"{prog}: {note}", file=sys.stderr)
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        for note in (Stopped.report, _end_runs("KILLED")):
            if note:
                print(f"{prog}: {note}", file=sys.stderr)
        print(f"{prog}: {'stopped by ' + Stopped.received if Stopped.received else 'interrupted'}",
              file=sys.stderr, flush=True)
        # The shell's convention: 128 + the signal's number (SIGTERM 143; Ctrl-C 130).
        code = 128 + signal.Signals[Stopped.received].value if Stopped.received else 130
        main_module = getattr(sys.modules["__main__"], "__spec__", None)
        if Stopped.received and getattr(main_module, "name", "") == f"jobs.{name}":
            # This job's own process, its runs ended: exit now. Interpreter teardown (ray.shutdown,
            # then collecting Torch's, Ray's and MLflow's objects) took 16 s on a busy 2-core
            # machine, and `ray job stop` SIGKILLs 3 s after its SIGTERM.
            import os

            sys.stdout.flush()
            os._exit(code)
        return code
    except BaseException:
        if note := _end_runs("FAILED"):
            print(f"{prog}: {note}", file=sys.stderr)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _end_runs(status: str) -> str:
    """End the job's open MLflow runs with `status`; returns the line to print ('': none)."""
    from framecast import tracking

    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut this short
    try:
        ended = tracking.end_open_runs(status)
    except Exception as err:  # the store is gone: the job's own error matters more
        return f"could not mark MLflow runs {status}: {err}"
    return f"MLflow runs marked {status}: {', '.join(ended)}" if ended else ""


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

    from framecast import model_io

    try:
        return model_io.load_logged_model(ref)
    except mlflow.exceptions.MlflowException as err:
        raise ValueError(f"--model {ref!r} not found in MLflow "
                         f"({mlflow.get_tracking_uri()}): {err.message[:200]}") from None


def note_other_data_kind(job: str, ref: str, meta: dict, manifest) -> None:
    """One line when the model was trained on another kind of data (2d / 3d) than `manifest`'s:
    frames of the same shape run, so nothing else would tell the user the scores are off-kind.
    The kind is in meta from now on; for older models, read from the data folder they name."""
    from framecast import data as fdata

    trained = meta.get("data_kind")
    if not trained and meta.get("data"):
        try:
            trained = fdata.read_manifest(meta["data"]).config.kind
        except (fdata.DatasetError, OSError):
            return
    if trained and trained != manifest.config.kind:
        print(f"{job}: note: {ref} was trained on {trained} data; this data is "
              f"{manifest.config.kind}")
