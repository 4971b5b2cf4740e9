"""framecast.tracking: the store and experiments every job shares."""

import threading

import mlflow

from framecast import tracking


def test_an_experiment_another_job_creates_meanwhile_is_used_not_an_error(monkeypatch):
    """Two jobs starting against one store both find no experiment and both create it: the
    second create fails in MLflow, and use_experiment then takes the one that exists (a Ray
    Train job and the fault benchmark's poller raced so, and the job died)."""
    first = tracking.use_experiment("race-test")
    real, calls = mlflow.get_experiment_by_name, []

    def lookup_before_the_other_commit(name):
        calls.append(name)
        return None if len(calls) == 1 else real(name)
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lookup_before_the_other_commit)
    assert tracking.use_experiment("race-test") == first
    assert len(calls) == 2


def test_threads_creating_one_experiment_at_once_all_get_it():
    barrier, ids, errors = threading.Barrier(4), [], []

    def start() -> None:
        barrier.wait()
        try:
            ids.append(tracking.use_experiment("race-test-threads"))
        except Exception as err:  # noqa: BLE001 - the failure under test
            errors.append(err)
    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(ids)) == 1


LOG_ONE = """
import mlflow
from framecast import model_io, tracking
from framecast.models import registry

tracking.use_experiment("bare-session")
with mlflow.start_run():
    model_io.log_model(registry.create("vblt", "tiny"), "vblt", registered_name="bare-model",
                       extra={"frame_shape": [12, 16, 16, 1]})
"""
LOAD_IT = """
from framecast import model_io
model, meta = model_io.load_logged_model("bare-model")
print(type(model).__name__, meta["name"])
"""


def test_a_bare_python_session_loads_what_the_jobs_logged(tmp_path, job_env):
    """No MLFLOW_TRACKING_URI and nothing set in the process: a model is found in framecast's
    store (where the jobs log), not looked for in a new, empty ./mlflow.db."""
    import subprocess
    import sys

    home, elsewhere = tmp_path / "home", tmp_path / "notebook"
    home.mkdir()
    elsewhere.mkdir()
    env = job_env(home)
    for code in (LOG_ONE, LOAD_IT):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, cwd=elsewhere, timeout=240)
        assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["VBLT", "vblt"]
    assert not (elsewhere / "mlflow.db").exists()
    assert (home / "mlruns" / "mlflow.db").exists()
    artifacts = home / "mlruns" / "artifacts" / "bare-session"
    assert any(artifacts.iterdir())  # framecast's store keeps its artifacts beside it
