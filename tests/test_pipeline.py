"""The pipeline end to end on the smoke preset, twice: the second run reuses every stage; a
stopped or failing job leaves no run RUNNING."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest

from jobs.pipeline import PipelineConfig, SummaryRow, pipeline, summary_table

REPO = Path(__file__).resolve().parents[1]


# The whole demo twice (~85 s, a fifth of the default run): each stage's job has its own tests
# in the default run, and reuse has test_a_finished_stage_is_reused_with_the_outputs_it_made.
@pytest.mark.slow
def test_pipeline_runs_every_stage_then_reuses_them(ray_local, tmp_path, capsys):
    config = PipelineConfig(preset="smoke", data_dir=str(tmp_path), workers=1, nbp=False,
                            experiment="test-pipeline")  # the NBP stage: the slow test below
    first = pipeline(config)
    for kind in ("2d", "3d"):
        for stage in ("render", "train", "evaluate", "quantize"):
            assert not first[f"{stage}-{kind}"].startswith("reused"), (stage, kind)
        assert "answered in" in first[f"serve-{kind}"]  # one real HTTP request per model
    versions = mlflow.MlflowClient().get_model_version_by_alias("vblt-2d-int8", "candidate")
    assert versions.tags["precision"] == "w8a8"

    table = first["summary"].splitlines()
    assert table[0].split()[:5] == ["data", "sequences", "model", "test", "PSNR"]
    for kind, line in zip(("2d", "3d"), table[2:4], strict=True):
        assert line.startswith(kind) and f"vblt-{kind} v" in line and f"vblt-{kind}-int8 v" in line
        assert "x smaller" in line and line.rstrip().endswith("ms")
    figures = [line.rsplit(": ", 1)[1] for line in table if "prediction figure" in line]
    assert len(figures) == 2 and all(Path(f).is_file() for f in figures)

    second = pipeline(config)
    assert all(what.startswith("reused") for stage, what in second.items()
               if not stage.startswith(("serve-", "summary"))), second
    out = capsys.readouterr().out
    assert "train-3d: reusing finished run" in out
    assert "serve:        python -m jobs.serve --model vblt-2d-int8,vblt-3d-int8" in out
    parents = mlflow.search_runs(experiment_names=["test-pipeline"],
                                 filter_string="tags.`framecast.job` = 'pipeline'")
    assert len(parents) == 2
    ratios = parents["metrics.2d_size_ratio"]
    assert ratios.notna().all() and ratios.min() > 1  # both parent runs logged it


def test_a_finished_stage_is_reused_with_the_outputs_it_made():
    """`reuse_or_run`, which every stage goes through: a second call with the same key runs
    nothing and gives back the first run's outputs; a run marked with the frame model's former
    tags ("name:version" in one) is read the same way."""
    from framecast import tracking
    from jobs.pipeline_stages import reuse_or_run

    calls = []

    def fake_stage() -> dict:
        with tracking.job_run("train", experiment="test-reuse") as run:
            mlflow.log_metric("val_psnr", 21.5)
        calls.append(run.info.run_id)
        return {"run_id": run.info.run_id, "model_uri": f"runs:/{run.info.run_id}/model",
                "registered": "nbp-2d", "version": 3, "metrics": {"val_psnr": 21.5}}

    done: dict[str, str] = {}
    first = reuse_or_run("train-nbp", "key-1", "test-reuse", done, fake_stage)
    assert done == {"train-nbp": first["run_id"]}
    second = reuse_or_run("train-nbp", "key-1", "test-reuse", done, fake_stage)
    assert calls == [first["run_id"]] and done["train-nbp"] == f"reused {first['run_id']}"
    assert {k: second[k] for k in ("run_id", "model_uri", "registered", "version", "metrics")} == {
        **{k: first[k] for k in ("run_id", "model_uri", "registered", "metrics")}, "version": "3"}

    with tracking.job_run("train", experiment="test-reuse") as old:
        pass
    tracking.mark_stage(old.info.run_id, "key-old", **{"framecast.model_uri": "runs:/x/model",
                                                       "framecast.registered": "vblt-2d:2"})
    reused = reuse_or_run("train-2d", "key-old", "test-reuse", done, fake_stage)
    assert len(calls) == 1 and (reused["model_uri"], reused["registered"], reused["version"]) == (
        "runs:/x/model", "vblt-2d", "2")


def test_the_summary_says_which_model_is_under_copy_last():
    def row(kind: str, psnr: float, ssim: float) -> SummaryRow:
        return SummaryRow(kind=kind, data=f"/d/{kind}", counts={"train": 8, "val": 1, "test": 1},
                          model=f"vblt-{kind} v1", int8=f"vblt-{kind}-int8 v1", psnr=psnr,
                          psnr_copy=20.0, ssim=ssim, ssim_copy=0.9, size_ratio=3.5,
                          speedup_b1=1.0, psnr_drop_db=0.0, serve_ms=10.0, figure="f.png")
    lines = summary_table([row("2d", 21.0, 0.95), row("3d", 19.67, 0.896)]).splitlines()
    assert lines[2].split()[:4] == ["2d", "8/1/1", "vblt-2d", "v1"]
    assert "21.00 (20.00)" in lines[2] and "0.896 (0.900)" in lines[3]
    under = [line for line in lines if "under copy-last-frame" in line]
    assert len(under) == 1 and under[0].startswith("3d:") and "PSNR -0.33 dB" in under[0]
    assert "SSIM -0.004" in under[0]


@pytest.mark.slow  # six more stages (two Ray Train fits, a Serve deployment): minutes
def test_the_pipelines_nbp_stage_trains_quantizes_and_serves_a_generator(ray_local, tmp_path):
    config = PipelineConfig(preset="smoke", data_dir=str(tmp_path), workers=1,
                            experiment="test-pipeline-nbp")
    done = pipeline(config)
    for stage in ("train-fsq", "train-nbp", "generate-nbp", "quantize-nbp"):
        assert not done[stage].startswith("reused"), stage
    assert "/generate answered in" in done["serve-nbp"]
    generator = mlflow.MlflowClient().get_model_version_by_alias("nbp-2d-int8", "candidate")
    assert generator.tags["precision"] == "w8a8"
    last = done["summary"].splitlines()[-1]
    assert last.startswith("NBP on 2D: tokenizer fsq-2d v") and "nbp-2d-int8 v" in last
    parent = mlflow.search_runs(experiment_names=["test-pipeline-nbp"],
                                filter_string="tags.`framecast.job` = 'pipeline'")
    served = mlflow.MlflowClient().list_artifacts(parent["run_id"].iloc[0], "nbp")
    assert [a.path for a in served] == ["nbp/served_generation.gif"]


def runs_of(home: Path, experiment: str) -> list:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlruns' / 'mlflow.db'}")
    found = client.get_experiment_by_name(experiment) if (home / "mlruns").exists() else None
    return client.search_runs([found.experiment_id]) if found else []


@pytest.mark.slow  # a second local Ray beside the session's: minutes on 2 cores
def test_a_pipeline_stopped_by_sigterm_leaves_no_running_run(tmp_path, job_env):
    """`ray job stop` sends SIGTERM (and SIGKILL 3 s later): the pipeline's parent run and the
    stage running then end KILLED (not RUNNING forever, as a killed process leaves them), and the
    job exits at once. Stopped while training: Ray Train's fit() waits in `ray.get`."""
    home, log = tmp_path / "home", tmp_path / "out.txt"
    env = job_env(home)
    with log.open("w") as out:  # a file, not a pipe: read while the job runs
        job = subprocess.Popen(
            [sys.executable, "-m", "jobs.pipeline", "--preset", "smoke", "--workers", "1",
             "--train-steps", "100000", "--data-dir", str(tmp_path / "data"),
             "--experiment", "stopped"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and job.poll() is None:
            if "train: step" in log.read_text():  # the train stage's progress: it is training
                break
            time.sleep(1)
        assert job.poll() is None and "train: step" in log.read_text(), log.read_text()[-3000:]
        job.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        job.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        job.kill()
    out = log.read_text()
    assert job.returncode == 143, out[-3000:]  # 128 + SIGTERM
    assert out.rstrip().endswith("stopped by SIGTERM"), out[-3000:]
    assert took < 20, f"{took:.1f} s from SIGTERM to exit"  # 2 s measured on a busy machine
    runs = runs_of(home, "stopped")
    assert not [r for r in runs if r.info.status == "RUNNING"]
    status = {r.data.tags.get("framecast.job"): r.info.status for r in runs}
    assert status["pipeline"] == "KILLED" and status["train"] == "KILLED"
    assert status["render"] == "FINISHED"  # a stage that finished before keeps its state


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_a_stopped_job_ends_its_runs_killed(stop):
    """`ray job stop` sends SIGTERM, a user presses Ctrl-C: the job's runs (the active one and
    one made through the client, as jobs.train does) end KILLED, never RUNNING."""
    from framecast import tracking
    from jobs.common import run_job

    @dataclass(frozen=True)
    class Nothing:
        pass

    def stopped(_config: Nothing) -> None:
        tracking.use_experiment(f"stopped-{stop}")
        with tracking.start_run(run_name="outer"):
            run = mlflow.MlflowClient().create_run(mlflow.active_run().info.experiment_id)
            tracking.remember_run(run.info.run_id)
            if stop == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler interrupts this
            raise KeyboardInterrupt

    assert run_job("stopped", Nothing, stopped, [], description="") == (
        143 if stop == "sigterm" else 130)
    runs = mlflow.search_runs(experiment_names=[f"stopped-{stop}"], output_format="list")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"KILLED"}


def test_a_job_that_fails_ends_its_runs_failed(tmp_path, monkeypatch):
    from framecast import tracking
    from jobs.common import run_job

    @dataclass(frozen=True)
    class Nothing:
        pass

    def broken(_config: Nothing) -> None:
        tracking.use_experiment("failing")
        with tracking.start_run(run_name="outer"):
            run = mlflow.MlflowClient().create_run(mlflow.active_run().info.experiment_id)
            tracking.remember_run(run.info.run_id)
            raise ValueError("the data folder is empty")

    assert run_job("broken", Nothing, broken, [], description="") == 2
    runs = mlflow.search_runs(experiment_names=["failing"], output_format="list")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FAILED"}
