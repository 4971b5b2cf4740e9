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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller scenarios: < 5 minutes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FRAMECAST_HOME", tmp)
        root = Path(tmp)
        train = train_worker_kill(root, steps=160 if args.quick else 400)
        rendered = render_interrupt(root, sequences=200 if args.quick else 800)
    rows = [["Ray Train worker SIGKILL", f"step {train['killed_at_step']:.0f} of "
             f"{train['steps']:.0f}, checkpoint every {train['checkpoint_every']:.0f}",
             f"{train['steps_lost']:.0f} steps recomputed, {train['recovery_s']:.1f} s to the "
             f"next step, final step {train['final_step']:.0f}, {train['mlflow_runs']:.0f} "
             "MLflow run"],
            ["render job SIGKILL mid-write", f"{rendered['partial_shards']:.0f} shard files in "
             "staging, no manifest", f"rerun detects and redoes it in {rendered['rerun_s']:.1f} "
             f"s; {rendered['sequences_ok']:.0f} sequences verify"]]
    table = markdown_table(["fault", "state at the fault", "cost"], rows)
    notes = (f"{'quick' if args.quick else 'full'} scenarios on {os.cpu_count()} CPU cores; "
             "tiny V-BLT (log every step), 200-800 sequence renders.")
    values = {"train_steps_lost": train["steps_lost"], "train_recovery_s": train["recovery_s"],
              "train_mlflow_runs": train["mlflow_runs"],
              "render_partial_shards": rendered["partial_shards"],
              "render_rerun_s": rendered["rerun_s"]}
    report("fault_tolerance", "Faults injected, costs measured", table, notes,
           f"RESULT fault_tolerance {key_values(values)}")


if __name__ == "__main__":
    main()
