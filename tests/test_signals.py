"""A job stopped by SIGTERM (`ray job stop`) ends its MLflow runs KILLED in the signal handler,
before anything unwinds: without Ray, by imitating what Ray's `ray.get` does to the handler's
exception (tests/test_pipeline.py stops a real pipeline)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import mlflow

from framecast import tracking
from jobs.common import run_job

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Nothing:
    pass


def ray_get_like(seen: dict) -> None:
    """Ray's `ray.get` runs a signal handler at its periodic check but re-raises what the
    handler raised as a plain KeyboardInterrupt (Stopped and the signal's name are lost)."""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10**8):  # the handler interrupts this at once
            pass
    except KeyboardInterrupt:
        seen["statuses"] = {r.info.status for r in mlflow.search_runs(
            experiment_names=[seen["experiment"]], output_format="list")}
        raise KeyboardInterrupt from None


def test_sigterm_ends_the_runs_killed_in_the_handler_though_ray_loses_the_exception(capsys):
    seen, before = {"experiment": "signals-ray-get"}, signal.getsignal(signal.SIGTERM)

    def job(_config: Nothing) -> None:
        tracking.use_experiment(seen["experiment"])
        with tracking.start_run(run_name="pipeline"):  # unwinding must not make it FAILED
            child = mlflow.MlflowClient().create_run(
                mlflow.active_run().info.experiment_id, tags=tracking.parent_tags())
            tracking.remember_run(child.info.run_id)
            ray_get_like(seen)

    assert run_job("stopped", Nothing, job, [], description="") == 143  # 128 + SIGTERM
    assert seen["statuses"] == {"KILLED"}  # already, before the exception left `ray.get`
    runs = mlflow.search_runs(experiment_names=[seen["experiment"]], output_format="list")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}
    err = capsys.readouterr().err
    assert "MLflow runs marked KILLED" in err and err.rstrip().endswith("stopped by SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is before  # run_job put it back


def test_a_job_whose_code_swallows_the_stop_still_ends_stopped(capsys):
    def job(_config: Nothing) -> None:
        tracking.use_experiment("signals-swallowed")
        with tracking.start_run(run_name="outer"):
            try:
                ray_get_like({"experiment": "signals-swallowed"})
            except KeyboardInterrupt:
                pass  # e.g. a library that treats Ctrl-C as "stop waiting"

    assert run_job("swallowed", Nothing, job, [], description="") == 143
    runs = mlflow.search_runs(experiment_names=["signals-swallowed"], output_format="list")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert capsys.readouterr().err.rstrip().endswith("stopped by SIGTERM")


def test_ctrl_c_still_ends_the_runs_killed(capsys):
    def job(_config: Nothing) -> None:
        tracking.use_experiment("signals-ctrl-c")
        with tracking.start_run(run_name="outer"):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10**8):
                pass

    # Python's own Ctrl-C handler: a Ray Train fit() earlier in this process leaves its own
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert run_job("interrupted", Nothing, job, [], description="") == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    runs = mlflow.search_runs(experiment_names=["signals-ctrl-c"], output_format="list")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert capsys.readouterr().err.rstrip().endswith("interrupted")


def test_a_job_process_stopped_by_sigterm_exits_at_once_with_its_runs_killed():
    """`python -m jobs.<name>` stopped by SIGTERM skips interpreter teardown (ray.shutdown, the
    final garbage collection: many seconds on a busy machine) once its runs are ended."""
    script = textwrap.dedent("""
        import atexit, dataclasses, os, signal, sys, types
        sys.modules["__main__"].__spec__ = types.SimpleNamespace(name="jobs.fake")
        from framecast import tracking
        from jobs.common import run_job

        def job(_config):
            tracking.use_experiment("signals-process")
            with tracking.start_run(run_name="outer"):
                atexit.register(print, "teardown ran")
                os.kill(os.getpid(), signal.SIGTERM)
                for _ in range(10**8):
                    pass

        run_job("fake", dataclasses.make_dataclass("Nothing", []), job, [], description="")
        print("run_job returned")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 143, done.stderr[-2000:]
    assert done.stderr.rstrip().endswith("stopped by SIGTERM")
    assert "returned" not in done.stdout and "teardown ran" not in done.stdout
    runs = mlflow.search_runs(experiment_names=["signals-process"], output_format="list")
    assert [r.info.status for r in runs] == ["KILLED"]


def test_ctrl_c_during_ray_trains_fit_is_an_interrupt_of_the_job():
    """Ray Train's fit() installs its own SIGINT handler (abort the run) and never restores the
    job's. Imitated here: a handler installed inside the context still runs, the Ctrl-C comes
    out as KeyboardInterrupt once fit() returns (or fails after the abort), and the job's own
    handler is back."""
    import pytest

    from jobs.train import ctrl_c_reaches_the_job

    ours = signal.getsignal(signal.SIGINT)
    aborted = []
    with pytest.raises(KeyboardInterrupt):
        with ctrl_c_reaches_the_job():
            signal.signal(signal.SIGINT, lambda s, f: aborted.append(s))  # Ray Train's
            os.kill(os.getpid(), signal.SIGINT)
    assert aborted == [signal.SIGINT] and signal.getsignal(signal.SIGINT) is ours
    with pytest.raises(KeyboardInterrupt) as raised:
        with ctrl_c_reaches_the_job():
            signal.signal(signal.SIGINT, lambda s, f: None)
            os.kill(os.getpid(), signal.SIGINT)
            raise RuntimeError("the run was aborted: no checkpoint")
    assert isinstance(raised.value.__cause__, RuntimeError)
    with ctrl_c_reaches_the_job():  # no Ctrl-C: nothing raised, nothing changed
        signal.signal(signal.SIGINT, lambda s, f: None)
    assert signal.getsignal(signal.SIGINT) is ours
