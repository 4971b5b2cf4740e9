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
