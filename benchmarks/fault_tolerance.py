"""Fault tolerance, measured: kill a Ray Train worker, interrupt a render, kill a Serve replica.

    python benchmarks/fault_tolerance.py --quick    # < 5 minutes on 2 cores
    python benchmarks/fault_tolerance.py            # the same scenarios, larger

Each scenario injects a real fault (SIGKILL of a real process) into the real job and reports
what it cost: training steps recomputed and seconds to recover; a render's partial output and
the rerun that repairs it; failed HTTP requests while Serve replaces a replica. The slow tests in
tests/test_faults.py run the same functions and assert the guarantees.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _tiny_data(root: Path, sequences: int = 32) -> Path:
    from jobs.render import RenderJobConfig, render

    return render(RenderJobConfig(kind="2d", num_sequences=sequences, frames=4, size=16,
                                  out=str(root / "data"), workers=1, mlflow=False)).out


def _alive_train_workers() -> list[int]:
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,  # this Ray, not another
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid]


def train_worker_kill(root: Path, steps: int = 240, checkpoint_every: int = 20,
                      kill_after: int = 50) -> dict[str, float]:
    """Train the tiny V-BLT, SIGKILL its Ray Train worker once `kill_after` steps are logged,
    let Ray Train restart it from the last checkpoint; count recomputed steps from MLflow."""
    import mlflow

    from framecast import tracking
    from framecast.cluster import init_ray
    from jobs.train import TrainJobConfig, train

    init_ray()
    data = _tiny_data(root)
    name = f"fault-train-{int(time.time())}"
    config = TrainJobConfig(data=str(data), preset="tiny", steps=steps, batch_size=4,
                            checkpoint_every=checkpoint_every, log_every=1, eval_every=steps,
                            eval_sequences=2, max_failures=2, name=name,
                            storage=str(root / "ray"), register="none",
                            experiment="framecast-faults")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(train(config)), daemon=True)
    thread.start()
    tracking.use_experiment(config.experiment)
    client = mlflow.MlflowClient()
    run_id, killed_at, kill_time = None, None, None
    deadline = time.time() + 600
    while thread.is_alive() and time.time() < deadline:
        if run_id is None:
            found = mlflow.search_runs(experiment_names=[config.experiment], output_format="list",
                                       filter_string=f"tags.`framecast.ray_run` = '{name}'")
            run_id = found[0].info.run_id if found else None
        elif killed_at is None:
            logged = client.get_metric_history(run_id, "loss")
            last = max((m.step for m in logged), default=0)
            workers = _alive_train_workers()
            if last >= kill_after and workers:
                for pid in workers:
                    os.kill(pid, signal.SIGKILL)
                killed_at, kill_time = last, time.time()
        time.sleep(0.1)
    thread.join(timeout=max(1.0, deadline - time.time()))
    if killed_at is None or "step" not in outcome:
        raise RuntimeError(f"the scenario did not run through: killed_at={killed_at}, "
                           f"outcome={sorted(outcome)}")
    history = client.get_metric_history(run_id, "loss")
    steps_seen = [m.step for m in history]
    recomputed = len(steps_seen) - len(set(steps_seen))  # steps logged twice: trained twice
    after = [m.timestamp / 1000 for m in history if m.timestamp / 1000 > kill_time]
    runs = mlflow.search_runs(experiment_names=[config.experiment], output_format="list",
                              filter_string=f"tags.`framecast.ray_run` = '{name}'")
    return {"steps": steps, "checkpoint_every": checkpoint_every, "killed_at_step": killed_at,
            "steps_lost": recomputed, "final_step": outcome["step"],
            "recovery_s": (min(after) - kill_time) if after else float("nan"),
            "mlflow_runs": len(runs)}


def _staged_shards(out: Path) -> list[Path]:
    from framecast import data as fdata

    return [p for d in fdata.stale_staging_dirs(out) for p in d.rglob("*.parquet")]


def render_interrupt(root: Path, sequences: int = 400) -> dict[str, float]:
    """SIGKILL a render job (and the Ray it started) while it writes shards; rerun it."""
    from framecast import data as fdata

    out = root / "interrupted"
    cmd = [sys.executable, "-m", "jobs.render", "--num-sequences", str(sequences), "--frames",
           "6", "--size", "32", "--workers", "2", "--mlflow", "false", "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not _staged_shards(out):
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    partial = len(_staged_shards(out))
    readable = (out / fdata.MANIFEST).exists()
    start = time.perf_counter()
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    if rerun.returncode != 0:
        raise RuntimeError(f"the rerun failed: {rerun.stderr[-1000:]}")
    videos, _ = fdata.load_numpy(out, "all", verify=True)
    return {"partial_shards": partial, "read_as_data_after_kill": int(readable),
            "detected": int("removing partial output" in rerun.stdout),
            "rerun_s": seconds, "sequences_ok": len(videos),
            "staging_left": len(fdata.stale_staging_dirs(out))}


SERVE_APP = "framecast-faults"
SERVE_MODEL = "fault-serve"
SERVE_FRAME_SHAPE = [8, 16, 16, 1]  # tiny V-BLT: 2 frames per step, context up to 6


def _serve_replica_pids(model: str) -> list[int]:
    """PIDs of the ALIVE replicas of deployment `model` of SERVE_APP, on this Ray only."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", f"ServeReplica:{SERVE_APP}:{model}"),
                                  ("state", "=", "ALIVE")])
    return [a.pid for a in actors if a.pid]


def _register_tiny_serve_model() -> str:
    """A randomly initialised tiny V-BLT registered as SERVE_MODEL; its version."""
    import mlflow
    import torch

    from framecast import model_io, tracking
    from framecast.models import create

    tracking.use_experiment("framecast-faults")
    torch.manual_seed(0)
    with mlflow.start_run(run_name="fault-serve"):
        info = model_io.log_model(create("vblt", "tiny").eval(), "vblt",
                                  registered_name=SERVE_MODEL,
                                  extra={"frame_shape": SERVE_FRAME_SHAPE, "preset": "tiny"})
    return str(info.registered_model_version)


def serve_replica_kill(root: Path, requests: int = 300, concurrency: int = 8,
                       kill_fraction: float = 0.3) -> dict[str, float | str]:
    """Serve a tiny V-BLT with the project's app (one model replica) and send `requests` predict
    calls over HTTP, `concurrency` at a time; once `kill_fraction` of them have answered, SIGKILL
    the model replica. Serve replaces it. Counts the requests that failed (non-200 or a connection
    error) and the seconds from the kill until the first request sent after it succeeded."""
    import numpy as np
    import requests as http
    from ray import serve

    from framecast.tracking import default_tracking_uri
    from jobs.serve import free_port, start_serve, stop_app
    from serve.app import build_app
    from serve.codec import encode_png

    del root  # the model goes to the MLflow store of FRAMECAST_HOME, like every registered one
    version = _register_tiny_serve_model()
    base, started = start_serve("127.0.0.1", free_port())
    args = {"models": [{"name": SERVE_MODEL, "alias": "latest", "num_cpus": 0.5,
                        "min_replicas": 1, "max_replicas": 1, "torch_threads": 1}],
            "tracking_uri": default_tracking_uri(), "ingress_cpus": 0.1}
    url = f"{base}/{SERVE_APP}/v1/models/{SERVE_MODEL}/predict"
    frames = np.random.default_rng(0).integers(0, 256, (4, *SERVE_FRAME_SHAPE[1:]),
                                               dtype=np.uint8)
    body = {"frames": [encode_png(f) for f in frames]}
    kill_after = max(1, int(requests * kill_fraction))
    local = threading.local()
    records: list[tuple[float, float, str]] = []  # (start, end, "200" or why it failed)

    def one() -> None:
        session = getattr(local, "session", None) or http.Session()
        local.session = session
        start = time.monotonic()
        try:
            response = session.post(url, json=body, timeout=120)
            outcome = str(response.status_code)
            if response.status_code == 200 and response.json()["version"] != version:
                outcome = "wrong model"
            elif response.status_code != 200:  # the app's JSON error: its detail names the cause
                detail = response.json().get("detail", "") if response.headers.get(
                    "content-type", "").startswith("application/json") else ""
                outcome = f"{outcome} {detail.split(' ')[0]}".strip()
        except http.RequestException as err:
            outcome = type(err).__name__
        records.append((start, time.monotonic(), outcome))

    try:
        serve.run(build_app(args), name=SERVE_APP, route_prefix=f"/{SERVE_APP}")
        pids = _serve_replica_pids(SERVE_MODEL)
        if len(pids) != 1:
            raise RuntimeError(f"expected one replica of {SERVE_MODEL}, found pids {pids}")
        killed_pid, new_pid, replaced_at = pids[0], None, None
        with ThreadPoolExecutor(concurrency) as pool:
            futures = [pool.submit(one) for _ in range(requests)]
            while len(records) < kill_after and not all(f.done() for f in futures):
                time.sleep(0.01)
            os.kill(killed_pid, signal.SIGKILL)
            kill_time = time.monotonic()
            deadline = kill_time + 180
            while new_pid is None and time.monotonic() < deadline:  # the replacement's start
                new = [p for p in _serve_replica_pids(SERVE_MODEL) if p != killed_pid]
                if new:
                    new_pid, replaced_at = new[0], time.monotonic()
                else:
                    time.sleep(0.2)
            for future in futures:
                future.result()
    finally:
        stop_app(SERVE_APP, started)
    failed = [r for r in records if r[2] != "200"]
    later_ok = [end for start, end, outcome in records if start > kill_time and outcome == "200"]
    recovered = min(later_ok) if later_ok else float("nan")
    after = [r for r in records if r[0] >= recovered]
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r[2]] = reasons.get(r[2], 0) + 1
    return {"requests": len(records), "concurrency": concurrency,
            "killed_after": kill_after, "failed": len(failed),
            "failed_before_kill": sum(r[1] < kill_time for r in failed),
            "failure_kinds": ", ".join(f"{n}x {k}" for k, n in sorted(reasons.items())),
            "recovery_s": recovered - kill_time,
            "replica_restart_s": (replaced_at - kill_time) if replaced_at else float("nan"),
            "after_recovery": len(after),
            "after_recovery_failed": sum(r[2] != "200" for r in after) if later_ok else -1,
            "replica_replaced": int(new_pid is not None and new_pid != killed_pid)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller scenarios: < 5 minutes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FRAMECAST_HOME", tmp)
        root = Path(tmp)
        # --quick: 80 steps (a report per step costs Ray Train ~0.5 s on 2 cores), kill at 30.
        train = train_worker_kill(root, steps=80 if args.quick else 400,
                                  kill_after=30 if args.quick else 50)
        rendered = render_interrupt(root, sequences=200 if args.quick else 800)
        served = serve_replica_kill(root, requests=150 if args.quick else 600,
                                    concurrency=8 if args.quick else 16)
    rows = [["Ray Train worker SIGKILL", f"step {train['killed_at_step']:.0f} of "
             f"{train['steps']:.0f}, checkpoint every {train['checkpoint_every']:.0f}",
             f"{train['steps_lost']:.0f} steps recomputed, {train['recovery_s']:.1f} s to the "
             f"next step, final step {train['final_step']:.0f}, {train['mlflow_runs']:.0f} "
             "MLflow run"],
            ["render job SIGKILL mid-write", f"{rendered['partial_shards']:.0f} shard files in "
             "staging, no manifest", f"rerun detects and redoes it in {rendered['rerun_s']:.1f} "
             f"s; {rendered['sequences_ok']:.0f} sequences verify"],
            ["Serve model replica SIGKILL under load", f"{served['killed_after']:.0f} of "
             f"{served['requests']:.0f} predict requests answered, {served['concurrency']:.0f} "
             "in flight, 1 replica",
             f"{served['failed']:.0f} requests failed ({served['failure_kinds'] or 'none'}); "
             f"{served['recovery_s']:.1f} s until a request sent after the kill succeeded "
             f"(replacement replica up after {served['replica_restart_s']:.1f} s); "
             f"{served['after_recovery_failed']:.0f} of the {served['after_recovery']:.0f} "
             "requests after that failed"]]
    table = markdown_table(["fault", "state at the fault", "cost"], rows)
    notes = (f"{'quick' if args.quick else 'full'} scenarios on {os.cpu_count()} CPU cores; "
             "tiny V-BLT (log every step), 200-800 sequence renders; Serve: the app of "
             "serve/app.py with a random tiny V-BLT (one replica, 0.5 CPU), 4 context frames "
             "of 16x16 as PNGs in JSON per request, client threads on the same cores.")
    values = {"train_steps_lost": train["steps_lost"], "train_recovery_s": train["recovery_s"],
              "train_mlflow_runs": train["mlflow_runs"],
              "render_partial_shards": rendered["partial_shards"],
              "render_rerun_s": rendered["rerun_s"],
              "serve_failed_requests": served["failed"], "serve_recovery_s": served["recovery_s"],
              "serve_after_recovery_failed": served["after_recovery_failed"],
              "serve_replica_replaced": served["replica_replaced"]}
    report("fault_tolerance", "Faults injected, costs measured", table, notes,
           f"RESULT fault_tolerance {key_values(values)}")


if __name__ == "__main__":
    main()
