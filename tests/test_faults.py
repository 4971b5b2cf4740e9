"""Faults injected into real jobs (slow: run with `make test-slow`). Each test prints the figure
it measured; benchmarks/fault_tolerance.py runs the same scenarios and records them."""

import pytest

from benchmarks.fault_tolerance import render_interrupt, serve_replica_kill, train_worker_kill

pytestmark = pytest.mark.slow


def test_a_killed_train_worker_resumes_from_its_last_checkpoint(ray_local, tmp_path):
    # 240 steps: the kill at step 50 must land while the run is still going, and on a busy
    # machine the poller (MLflow history, Ray's state API) can lag by tens of steps.
    got = train_worker_kill(tmp_path, steps=240, checkpoint_every=20, kill_after=50)
    print(f"\ntrain worker SIGKILL at step {got['killed_at_step']}: {got['steps_lost']} steps "
          f"recomputed, {got['recovery_s']:.1f} s to recover")
    assert got["final_step"] == 240  # the run ends with the same number of steps
    assert got["mlflow_runs"] == 1  # one MLflow run, continued
    assert 0 <= got["steps_lost"] <= got["checkpoint_every"]  # at most one interval lost


def test_an_interrupted_render_is_detected_and_redone(tmp_path):
    got = render_interrupt(tmp_path, sequences=200)
    print(f"\nrender SIGKILL: {got['partial_shards']} partial shards; rerun "
          f"{got['rerun_s']:.1f} s")
    assert got["partial_shards"] > 0 and not got["read_as_data_after_kill"]
    assert got["detected"] and got["sequences_ok"] == 200 and got["staging_left"] == 0


def test_a_killed_serve_replica_is_replaced_and_no_request_fails(ray_local, tmp_path):
    got = serve_replica_kill(tmp_path, requests=300, concurrency=8)
    print(f"\nServe replica SIGKILL after {got['killed_after']} of {got['requests']} requests: "
          f"{got['failed']} failed ({got['failure_kinds'] or 'none'}), "
          f"{got['recovery_s']:.1f} s to recover (new replica after "
          f"{got['replica_restart_s']:.1f} s)")
    assert got["requests"] == 300
    assert got["replica_replaced"] == 1  # a new replica process, not the killed one
    # The ingress sends a call whose replica died again (serve/app.py `_call`): no request
    # fails, those in flight at the kill only wait for the replacement.
    assert got["failed"] == 0, got["failure_kinds"]
    assert got["recovery_s"] > 0 and got["after_recovery"] > 0  # it came back under load
