"""Faults injected into real jobs (slow: run with `make test-slow`). Each test prints the figure
it measured; benchmarks/fault_tolerance.py runs the same scenarios and records them.

The node scenarios start a Ray cluster of their own (a head and worker nodes on this machine),
so they run in a fresh Python: this session's Ray (`ray_local`) would stand in their way."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.fault_tolerance import (
    render_interrupt,
    serve_replica_kill,
    serve_two_replicas_kill,
    train_worker_kill,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def in_fresh_python(scenario: str, root: Path, timeout: float = 900, **kwargs: object) -> dict:
    """benchmarks.fault_tolerance.<scenario>(root, **kwargs) run by a fresh Python; its dict."""
    code = ("import json, sys; from pathlib import Path; import benchmarks.fault_tolerance as f; "
            f"got = f.{scenario}(Path(sys.argv[1]), **json.loads(sys.argv[2])); "
            "print('SCENARIO ' + json.dumps(got))")
    proc = subprocess.run([sys.executable, "-c", code, str(root), json.dumps(kwargs)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("SCENARIO ")][-1]
    return json.loads(line.removeprefix("SCENARIO "))


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


def _latencies(got: dict) -> str:
    return "; ".join(f"{phase} p50 {got[f'p50_ms_{phase}']:.0f} p99 {got[f'p99_ms_{phase}']:.0f}"
                     f" ms ({got[f'n_{phase}']} sent)" for phase in ("before", "during", "after"))


def test_one_of_two_replicas_killed_under_load_fails_no_request(ray_local, tmp_path):
    got = serve_two_replicas_kill(tmp_path, threads=4, before_s=10, after_s=10)
    print(f"\n1 of 2 replicas SIGKILL: {got['failed']} of {got['requests']} failed "
          f"({got['failure_kinds'] or 'none'}); replacement serving after "
          f"{got['replica_serving_s']:.1f} s; {_latencies(got)}")
    # The survivor takes the load, the calls the dead one held are sent again (`_call`).
    assert got["failed"] == 0, got["failure_kinds"]
    assert got["replica_replaced"] == 1 and got["replica_serving_s"] > 0  # a new replica serves
    assert min(got["n_before"], got["n_during"], got["n_after"]) > 0  # load in every phase


def test_a_node_killed_under_serve_load_fails_no_request(tmp_path):
    got = in_fresh_python("serve_node_kill", tmp_path, threads=4, before_s=10, after_s=10)
    print(f"\nnode SIGKILL under Serve load: {got['failed']} of {got['requests']} failed "
          f"({got['failure_kinds'] or 'none'}); node marked dead after "
          f"{got['node_dead_s']:.1f} s; {_latencies(got)}")
    assert got["failed"] == 0, got["failure_kinds"]
    assert got["survivor_on_head"] == 1  # the head's replica answered the rest
    assert min(got["n_before"], got["n_during"], got["n_after"]) > 0


def test_a_node_killed_under_training_costs_at_most_one_checkpoint_interval(tmp_path):
    got = in_fresh_python("train_node_kill", tmp_path, steps=60, checkpoint_every=10,
                          kill_after=25)
    print(f"\nnode SIGKILL at step {got['killed_at_step']} of a 2-worker run: "
          f"{got['steps_lost']} steps recomputed; node dead after {got['node_dead_s']:.1f} s, "
          f"replacement joined at {got['replacement_s']:.1f} s, training resumed at "
          f"{got['resumed_s']:.1f} s")
    assert got["workers_on_killed_node"] == 1  # one worker per node: one of them died
    assert got["final_step"] == 60 and got["mlflow_runs"] == 1
    assert 0 <= got["steps_lost"] <= got["checkpoint_every"]
    assert got["workers_on_replacement"] == 1  # restarted with a worker on the new node


def test_a_node_killed_under_a_tune_study_reruns_no_finished_trial(tmp_path):
    got = in_fresh_python("tune_node_kill", tmp_path, steps=20, checkpoint_every=5)
    print(f"\nnode SIGKILL under a Tune study: {got['finished']} of {got['trials']} trials "
          f"finished, {got['failed']} failed; the hit trial retried {got['hit_retried']}, "
          f"marked failed {got['hit_marked_failed']}; {got['finished_before_kill']} finished "
          f"before the kill, {got['finished_trials_rerun']} of them ran again")
    assert got["trials"] == 3 and got["finished"] + got["failed"] == 3  # the study ended
    assert got["finished_before_kill"] >= 1 and got["finished_trials_rerun"] == 0
    assert got["hit_trials"] == 1 and got["hit_retried"] + got["hit_marked_failed"] == 1
