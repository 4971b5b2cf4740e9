"""Ray Train on CPU with 2 workers: trains, checkpoints, logs to MLflow, resumes; evaluation."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from rendered import tiny_2d

from framecast import model_io
from framecast.distribution import DECODES
from jobs.evaluate import EvaluateConfig, evaluate_job
from jobs.train import TrainJobConfig, main, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(ray_local, tmp_path_factory):
    return tiny_2d(tmp_path_factory.mktemp("train") / "tri", num_sequences=20, frames=4,
                   size=16, val_fraction=0.2, test_fraction=0.1)


@pytest.mark.slow  # two Ray Train runs; the stream test keeps two workers in the default run
def test_two_workers_train_checkpoint_log_and_resume(tiny_data, tmp_path):
    base = {"data": str(tiny_data), "preset": "tiny", "batch_size": 2, "workers": 2,
            "checkpoint_every": 3, "log_every": 1, "name": "resume-me",
            "storage": str(tmp_path / "ray"), "register": "vblt-test"}
    first = train(TrainJobConfig(steps=6, **base))
    assert first["step"] == 6
    checkpoints = [p for p in (tmp_path / "ray" / "resume-me").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # num_to_keep=2 of the ones at steps 3 and 6

    client = mlflow.MlflowClient()
    run = client.get_run(first["run_id"])
    assert run.data.params["workers"] == "2"
    # each rank names the Ray node it ran on (one node here)
    node = {run.data.tags["framecast.node.rank0"], run.data.tags["framecast.node.rank1"]}
    assert len(node) == 1 and len(node.pop()) == 56  # a Ray node id: 28 bytes in hex
    assert "final_val_psnr" in run.data.metrics and "final_val_psnr_copy_last" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(first["run_id"], "figures")}
    assert artifacts == {"figures/prediction.png"}

    # Same name, larger budget: continues from step 6 into the same MLflow run.
    second = train(TrainJobConfig(steps=9, **base))
    assert second["step"] == 9 and second["run_id"] == first["run_id"]
    steps = [m.step for m in client.get_metric_history(first["run_id"], "loss")]
    assert steps == list(range(1, 10))  # each step logged once: nothing redone, nothing skipped
    versions = client.search_model_versions("name='vblt-test'")
    assert sorted(int(v.version) for v in versions) == [1, 2]

    model, meta = model_io.load_logged_model("vblt-test")
    assert meta["step"] == 9 and meta["name"] == "vblt"
    chosen = client.get_run(first["run_id"]).data.tags["framecast.decode"]  # picked on val
    assert model.cfg.decode == chosen and chosen in DECODES
    assert {f"final_val_psnr_{d}" for d in DECODES} <= set(
        client.get_run(first["run_id"]).data.metrics)
    result = evaluate_job(EvaluateConfig(model="vblt-test", data=str(tiny_data), split="val"))
    assert len(result["rows"]) == 4 - model.context_frames
    assert result["summary"]["val_psnr_copy_last"] > 0


@pytest.mark.parametrize("argv, message", [
    ([], "--data is required"),
    (["--data", "/nonexistent"], "/nonexistent does not exist"),
    (["--data", "/tmp"], "not a complete framecast data set"),
    (["--data", "x", "--steps", "0"], "--steps 0 must be > 0"),
    (["--data", "x", "--placement", "ROUND"], "placement='ROUND': expected one of PACK"),
    (["--data", "x", "--worker-resources", "CPU=1"], "worker_resources: 'CPU=1': expected"),
    (["--data", "x", "--worker-resources", "trainer"], "worker_resources: 'trainer': expected"),
])
def test_bad_train_input_exits_2_with_one_line(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_a_cpu_reservation_that_would_hang_training_is_refused(tiny_data, capsys):
    code = main(["--data", str(tiny_data), "--preset", "tiny", "--workers", "2",
                 "--cpus-per-worker", "1", "--batch-size", "2", "--steps", "2"])
    assert code == 2 and "leaves no CPU" in capsys.readouterr().err


@pytest.mark.slow  # a subprocess with its own Ray and a training run: 78 s of the CI budget
def test_the_train_job_prints_its_own_progress_and_keeps_ray_s_logs_out(tiny_data, tmp_path,
                                                                       job_env):
    """A user's terminal shows one line per logged step (once, not once per log path) and
    the result, not Ray's progress blocks, worker prefixes or deprecation notices."""
    env = job_env(tmp_path)
    env.pop("FRAMECAST_VERBOSE", None)
    out = subprocess.run(
        [sys.executable, "-m", "jobs.train", "--data", str(tiny_data), "--preset", "tiny",
         "--steps", "4", "--batch-size", "2", "--log-every", "2", "--checkpoint-every", "4",
         "--storage", str(tmp_path / "ray"), "--register", "none"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = (out.stdout + out.stderr).splitlines()
    steps = [line for line in lines if line.startswith("train: step ")]
    assert [line.split()[2] for line in steps[:2]] == ["2/4", "4/4"]
    assert len(steps) == len(set(steps))
    assert any(line.startswith("ray: logs in ") for line in lines)
    noise = [line for line in lines if "RayTrainWorker" in line or "TrainController" in line
             or "logging_progress" in line or "DeprecationWarning" in line]
    assert not noise, noise[:5]


def test_a_stream_run_trains_on_fresh_sequences_each_once_and_keeps_val_fixed(tiny_data,
                                                                              tmp_path):
    """Two workers (DDP) on a stream: the default run's multi-worker Ray Train check (the
    two-worker resume test is slow). Resumed, the stream goes on where it stopped."""
    from framecast import data as fdata
    from jobs.stream_cursor import saved_next

    before = fdata.read_manifest(tiny_data)
    base = {"data": str(tiny_data), "preset": "tiny", "batch_size": 2, "workers": 2,
            "checkpoint_every": 3, "log_every": 1, "stream": True, "name": "stream-2",
            "storage": str(tmp_path / "ray"), "register": "none"}
    result = train(TrainJobConfig(steps=6, **base))
    assert result["step"] == 6
    checkpoints = [p for p in (tmp_path / "ray" / "stream-2").glob("checkpoint_*") if p.is_dir()]
    assert len(checkpoints) == 2  # num_to_keep=2 of the ones at steps 3 and 6
    client = mlflow.MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.data.params["workers"] == "2"
    nodes = {run.data.tags["framecast.node.rank0"], run.data.tags["framecast.node.rank1"]}
    assert len(nodes) == 1 and len(nodes.pop()) == 56  # a Ray node id: 28 bytes in hex
    ranks = [json.loads(Path(client.download_artifacts(
        result["run_id"], f"stream/indices_rank{r}.json", tmp_path)).read_text()) for r in (0, 1)]
    indices = ranks[0] + ranks[1]
    # one batch a step per rank, no sequence read twice, by one rank or by both
    assert len(ranks[0]) == len(ranks[1]) == 6 * 2 and len(set(indices)) == 24
    assert min(indices) >= before.config.num_sequences  # none of the data set's own sequences
    assert fdata.read_manifest(tiny_data) == before  # val and test: the rendered set, unchanged
    assert "final_val_psnr" in run.data.metrics

    # Same name, 3 more steps: from the step-6 checkpoint, on sequences never handed out before
    # (Ray Data may have rendered ahead of the first run's last step: those are skipped).
    claimed = saved_next(tmp_path / "ray" / "stream-2")
    assert claimed >= max(indices) + 1
    again = train(TrainJobConfig(steps=9, **base))
    assert again["step"] == 9 and again["run_id"] == result["run_id"]
    later = [i for r in (0, 1) for i in json.loads(Path(client.download_artifacts(
        result["run_id"], f"stream/indices_rank{r}_from_step6.json", tmp_path)).read_text())]
    assert len(later) == len(set(later)) == 3 * 2 * 2 and min(later) >= claimed


def test_the_plan_hands_out_the_model_it_checked_once_then_fresh_ones(tiny_data):
    """jobs.train.plan builds the model to check it against the data; the first build() is that
    model (a Tune trial profiles it, then finish loads the trained weights into it), later
    ones are new instances of the same config."""
    from jobs.train import plan

    checked = plan(TrainJobConfig(data=str(tiny_data), preset="tiny", steps=1))
    [kept] = checked.built
    first, second = checked.build(), checked.build()
    assert first is kept and not checked.built
    assert first is not second and type(first) is type(second)
    assert first.cfg == second.cfg == checked.model
    assert checked.build() is not second
