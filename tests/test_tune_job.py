"""jobs.tune on a real local Ray and MLflow store: a 2-trial study of the tiny V-BLT runs end
to end (parent run, a child run per trial, table, plot, a best config jobs.train accepts);
a finished study is not run again; a study killed after one trial resumes with the other."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from rendered import tiny_2d

from framecast.config import parse_args
from jobs.train import TrainJobConfig
from jobs.train import plan as train_plan
from jobs.tune import STUDY_TAG, TRIAL_TAG, TuneJobConfig, main, make_tuner, tune_job
from jobs.tune_progress import PROGRESS
from jobs.tune_study import prepare

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(ray_local, tmp_path_factory):
    return tiny_2d(tmp_path_factory.mktemp("tune") / "tri", num_sequences=16, frames=4,
                   size=16, val_fraction=0.25, test_fraction=0.0)


def write_space(folder: Path, name: str, cpu: float, **changes) -> Path:
    space = {
        "name": name, "job": "train",
        "base": {"model": "vblt", "preset": "tiny", "steps": 4, "batch_size": 2, "log_every": 1,
                 "checkpoint_every": 2, "eval_every": 2, "eval_sequences": 2,
                 "experiment": name},
        "params": {"model_config.patch": {"grid": ["1x4x4", "2x4x4"]}},
        "metric": "val_psnr", "mode": "max", "report": ["gflops"],
        "scheduler": "fifo", "trial_resources": {"cpu": cpu},
        "plot": {"x": "gflops", "y": "val_psnr"}, **changes}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def runs_of(experiment: str) -> list:
    from framecast import tracking

    tracking.use_experiment(experiment)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


@pytest.mark.slow  # two Ray Train fits inside Ray Tune: minutes on 2 cores
def test_a_two_trial_study_runs_end_to_end_then_is_not_run_again(data, tmp_path, capsys):
    space = write_space(tmp_path, "tiny-patches", cpu=0.5)  # both trials side by side
    result = tune_job(TuneJobConfig(space=str(space), data=str(data),
                                    storage=str(tmp_path / "ray")))
    out = capsys.readouterr().out
    assert result["ran"] == 2 and len(result["rows"]) == 2
    assert all(r["status"] == "finished" and r["step"] == 4 for r in result["rows"])
    assert out.count("tune: trial ") == 2 and "best so far" in out  # one line per trial

    runs = runs_of("tiny-patches")
    [parent] = [r for r in runs if r.data.tags.get(STUDY_TAG) == "tiny-patches"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and len(children) == 2
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.params["model.patch"] for c in children} == {"1x4x4", "2x4x4"}
    client = mlflow.MlflowClient()
    for child in children:
        assert TRIAL_TAG in child.data.tags and "gflops" in child.data.metrics
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "loss")]
        assert steps == [1, 2, 3, 4]  # every step's metrics, once
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert artifacts == {"study/results.md", "study/results.csv", "study/plot.png",
                         "study/best_config.yaml"}
    assert result["table"].count("| finished |") == 2

    # The best trial's config is a jobs.train config; flags on the command line win.
    best = result["best_config"]
    config = parse_args(TrainJobConfig, ["--config", str(best), "--steps", "6"])
    best_patch = result["best"]["model_config.patch"]
    assert config.steps == 6 and config.overrides["patch"] == tuple(
        int(v) for v in best_patch.split("x"))
    assert config.data == str(data) and config.preset == "tiny" and config.register == ""
    train_plan(config)  # the data and the model accept it

    # A finished study prints its table and runs nothing.
    again = tune_job(TuneJobConfig(space=str(space), data=str(data),
                                   storage=str(tmp_path / "ray")))
    out = capsys.readouterr().out
    assert again["ran"] == 0 and "0 trials run" in out and again["table"] == result["table"]
    assert len(runs_of("tiny-patches")) == 3


@pytest.mark.slow  # one Ray Train fit inside Ray Tune
def test_the_study_s_trial_trains_through_jobs_train_s_entry_point(data, tmp_path):
    """The trial function the study's Tuner runs (its settings through tune.with_parameters)
    runs jobs.train's plan / fit / finish in a child run of the study's parent run, and
    reports to Tune: no second copy of training."""
    from framecast import tracking

    space = write_space(tmp_path, "one-trial", cpu=0.5,
                        params={"model_config.patch": {"grid": ["1x4x4"]}})
    study = prepare(TuneJobConfig(space=str(space), data=str(data),
                                  storage=str(tmp_path / "ray")))
    PROGRESS.reset(study)  # the Tuner's progress callback prints through it
    tracking.use_experiment(study.experiment)
    with mlflow.start_run() as parent:
        [result] = make_tuner(study, parent.info.run_id, concurrent=1, threads=1).fit()
    assert result.error is None and result.metrics["step"] == 4
    assert result.config["p"] == {"model_config.patch": "1x4x4"}
    [child] = [r for r in runs_of("one-trial")
               if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert child.info.status == "FINISHED"
    assert child.data.tags[TRIAL_TAG] == f"one-trial/{result.metrics['trial_id']}"
    assert child.data.params["model.patch"] == "1x4x4"
    assert {"final_val_psnr", "gflops", "params"} <= set(child.data.metrics)


def test_a_space_that_does_not_fit_the_data_stops_before_ray_and_mlflow(data, tmp_path, capsys):
    space = write_space(tmp_path, "misfit", cpu=0.5,
                        params={"model_config.patch": {"grid": ["1x4x4", "1x5x5"]}})
    code = main(["--space", str(space), "--data", str(data), "--storage", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "params.model_config.patch=1x5x5: patch 1x5x5 does not tile" in err
    assert not (tmp_path / "misfit").exists()
    metric = write_space(tmp_path, "nometric", cpu=0.5, metric="val_fvd")
    assert main(["--space", str(metric), "--data", str(data)]) == 2
    assert "metric 'val_fvd' is not among the trial's metrics" in capsys.readouterr().err


@pytest.mark.slow  # a second local Ray in a subprocess, then a resumed study: minutes
def test_a_study_killed_after_one_trial_resumes_with_only_the_other(data, tmp_path,
                                                                    monkeypatch, capsys,
                                                                    job_env):
    home, log = tmp_path / "home", tmp_path / "out.txt"
    space = write_space(tmp_path, "killed", cpu=1.0,  # one trial at a time
                        base={"model": "vblt", "preset": "tiny", "steps": 16, "batch_size": 2,
                              "log_every": 2, "checkpoint_every": 4, "eval_every": 8,
                              "eval_sequences": 2, "experiment": "killed"})
    argv = ["--space", str(space), "--data", str(data), "--storage", str(tmp_path / "ray")]
    env = job_env(home)
    with log.open("w") as out:
        job = subprocess.Popen([sys.executable, "-m", "jobs.tune", *argv], cwd=REPO, env=env,
                               stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900  # a first trial takes minutes on a loaded 2-core machine
        while time.monotonic() < deadline and job.poll() is None:
            if "tune: trial 1/2" in log.read_text():
                break
            time.sleep(1)
        assert job.poll() is None and "tune: trial 1/2" in log.read_text(), log.read_text()
        time.sleep(8)  # the second trial is starting or training
        job.send_signal(signal.SIGTERM)
        job.wait(timeout=120)
    finally:
        job.kill()
    assert job.returncode == 143, log.read_text()[-3000:]
    first = log.read_text().split("tune: trial 1/2 ")[1].split()[0]

    monkeypatch.setenv("FRAMECAST_HOME", str(home))  # the killed study's MLflow store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = tune_job(parse_args(TuneJobConfig, argv))
    assert result["ran"] == 1 and result["reused"] == 1
    assert {r["status"] for r in result["rows"]} == {"finished"}
    runs = runs_of("killed")
    [parent] = [r for r in runs if r.data.tags.get(STUDY_TAG) == "killed"]
    assert parent.info.status == "FINISHED"
    assert not [r for r in runs if r.info.status == "RUNNING"]
    children = {r.data.tags[TRIAL_TAG]: r for r in runs
                if TRIAL_TAG in r.data.tags and r.info.status == "FINISHED"}
    assert len(children) == 2
    client = mlflow.MlflowClient()
    done_first = children[f"killed/{first}"]
    steps = [m.step for m in client.get_metric_history(done_first.info.run_id, "loss")]
    assert steps == list(range(2, 17, 2))  # trained once, not again
    [other] = [c for k, c in children.items() if k != f"killed/{first}"]
    steps = [m.step for m in client.get_metric_history(other.info.run_id, "loss")]
    # Resumed from its last checkpoint (every 4 steps): at most the steps since it again.
    assert max(steps) == 16 and len(steps) <= 8 + 2, steps
