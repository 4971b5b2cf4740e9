"""The cluster path end to end (slow): `ray start --head`, `mlflow server`, then every job through
`ray job submit --working-dir .`, exactly as the README tells a user to."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray_nodes
from ray_nodes import free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv's bin: ray, mlflow, python


def wait_for(check, what: str, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False


@pytest.fixture()
def cluster(tmp_path):
    """A Ray head on 127.0.0.1 and an MLflow server on SQLite, both stopped afterwards.

    `ray start --block` in its own process group, so that stopping it stops this head only
    (`ray stop` would stop every Ray on the machine)."""
    env = ray_nodes.node_env()
    dashboard, gcs, mlflow_port = free_port(), free_port(), free_port()
    temp_dir = Path("/tmp") / f"ray-fc-{os.getpid()}"  # Ray needs a short socket path
    # Every port our own (ray_nodes.ray_start): a local Ray someone else runs on this machine
    # holds the defaults (job agent 52365, client server 10001), and the head then takes no job.
    head = ray_nodes.start(ray_nodes.ray_start(cpus=2, resources={}, head_port=gcs,
                                               dashboard_port=dashboard, temp_dir=temp_dir))
    server = ray_nodes.mlflow_server(tmp_path / "mlflow", mlflow_port)
    try:
        address, tracking = f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{mlflow_port}"
        # 85 s for the dashboard measured on a busy 2-core machine
        wait_for(lambda: http_ok(f"{address}/api/version"), "ray dashboard (job server)", 300)
        wait_for(lambda: http_ok(f"{tracking}/health"), "mlflow server", 300)
        yield {"address": address, "tracking": tracking, "env": env}
    finally:
        ray_nodes.stop(server, head)
        shutil.rmtree(temp_dir, ignore_errors=True)


def start_job(cluster: dict, *args: str, stop_wait_s: int = 30) -> str:
    """`ray job submit --no-wait -- python -m ARGS`; returns the submission id. `ray job stop`
    SIGKILLs the job `stop_wait_s` after its SIGTERM (Ray's default: 3 s; 30 s lets jobs.serve
    shut Serve down)."""
    env_vars = {"MLFLOW_TRACKING_URI": cluster["tracking"], "RAY_AUTH_MODE": "disabled",
                "RAY_JOB_STOP_WAIT_TIME_S": str(stop_wait_s)}
    base = [str(BIN / "ray"), "job"]
    address = ["--address", cluster["address"]]
    # A fresh head's job agent takes a moment ("please try again later"), and a busy machine's
    # dashboard can miss the CLI's connection check ("Failed to connect to Ray").
    for _ in range(60):
        proc = subprocess.run(
            [*base, "submit", *address, "--no-wait", "--working-dir", str(REPO),
             "--runtime-env-json", json.dumps({"env_vars": env_vars}), "--", "python", "-m",
             *args], env=cluster["env"], capture_output=True, text=True, timeout=300)
        out = proc.stdout + proc.stderr
        if "try again later" not in out and "Failed to connect to Ray" not in out:
            break
        time.sleep(2)
    assert proc.returncode == 0, out[-2000:]
    return next(w.strip("'") for line in out.splitlines() for w in line.split()
                if w.strip("'").startswith("raysubmit_"))


def job_status(cluster: dict, job_id: str) -> str:
    """`ray job status` in lower case, e.g. "... job 'raysubmit_..' succeeded"."""
    proc = subprocess.run([str(BIN / "ray"), "job", "status", "--address", cluster["address"],
                           job_id], env=cluster["env"], capture_output=True, text=True,
                          timeout=60)
    return (proc.stdout + proc.stderr).lower()


def stop_job(cluster: dict, job_id: str) -> None:
    subprocess.run([str(BIN / "ray"), "job", "stop", "--address", cluster["address"], job_id],
                   env=cluster["env"], capture_output=True, timeout=120)
    wait_for(lambda: "stopped" in job_status(cluster, job_id), "ray job stop", timeout=120)


def submit(cluster: dict, *args: str, timeout: float = 600.0) -> str:
    """Submit a job, follow `ray job status` until it ends; returns its logs (`ray job logs`).
    Fails the test when the job does not succeed."""
    base = [str(BIN / "ray"), "job"]
    address = ["--address", cluster["address"]]
    job_id = start_job(cluster, *args)
    deadline, status = time.time() + timeout, ""
    while time.time() < deadline:
        status = job_status(cluster, job_id)
        if any(f"{job_id.lower()}' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    logs = subprocess.run([*base, "logs", *address, job_id], env=cluster["env"],
                          capture_output=True, text=True, timeout=60).stdout
    assert f"{job_id.lower()}' succeeded" in status, f"{args[0]}: {status[-500:]}\n{logs[-3000:]}"
    return logs


def test_every_job_runs_through_ray_job_submit(cluster, tmp_path):
    import mlflow

    data = tmp_path / "data"
    logs = submit(cluster, "jobs.render", "--kind", "2d", "--num-sequences", "24", "--frames",
                  "4", "--size", "16", "--workers", "1", "--out", str(data))
    assert "render: wrote" in logs
    logs = submit(cluster, "jobs.train", "--data", str(data), "--preset", "tiny", "--steps", "4",
                  "--batch-size", "4", "--checkpoint-every", "4", "--log-every", "2",
                  "--storage", str(tmp_path / "ray"), "--register", "fc-cluster")
    assert "registered as fc-cluster" in logs
    logs = submit(cluster, "jobs.evaluate", "--model", "fc-cluster", "--data", str(data))
    assert "evaluate: logged MLflow run" in logs
    logs = submit(cluster, "jobs.quantize", "--model", "fc-cluster", "--data", str(data),
                  "--stage-steps", "1", "--final-steps", "1", "--batch-size", "4",
                  "--calib-batches", "1", "--eval-sequences", "4", "--latency-repeats", "1",
                  "--register", "fc-cluster-int8")
    assert "registered as fc-cluster-int8" in logs

    client = mlflow.MlflowClient(cluster["tracking"])
    version = client.get_model_version_by_alias("fc-cluster-int8", "candidate")
    assert version.tags["precision"] == "w8a8"
    jobs = {r.data.tags.get("framecast.job") for r in client.search_runs(
        [e.experiment_id for e in client.search_experiments()])}
    assert {"render", "train", "evaluate", "quantize"} <= jobs

    # `ray job stop` while training, with Ray's default 3 s from SIGTERM to SIGKILL: the train
    # run ends KILLED, not RUNNING forever.
    job_id = start_job(cluster, "jobs.train", "--data", str(data), "--preset", "tiny",
                       "--steps", "100000", "--batch-size", "4", "--log-every", "2",
                       "--checkpoint-every", "1000", "--storage", str(tmp_path / "ray"),
                       "--name", "fc-stopped", "--register", "none", stop_wait_s=3)

    def stopped_run():
        return client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  "tags.`framecast.ray_run` = 'fc-stopped'")

    wait_for(lambda: any(client.get_metric_history(r.info.run_id, "loss") for r in stopped_run()),
             "the train job's first steps", timeout=300)
    stop_job(cluster, job_id)
    assert [r.info.status for r in stopped_run()] == ["KILLED"]
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", cluster["address"],
                           job_id], env=cluster["env"], capture_output=True, text=True,
                          timeout=60).stdout
    assert "stopped by SIGTERM" in logs, logs[-2000:]

    # Serve: a long-running job; one HTTP request; `ray job stop` shuts it down cleanly.
    import numpy as np
    import requests

    from framecast import data as fdata
    from serve.codec import encode_png

    port = free_port()
    job_id = start_job(cluster, "jobs.serve", "--model", "fc-cluster-int8", "--port", str(port))
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http_ok(f"{base}/healthz"), "the served model", timeout=300)
    info = requests.get(f"{base}/v1/models/fc-cluster-int8", timeout=30).json()
    assert info["precision"] == "w8a8" and info["alias"] == "candidate"
    video = fdata.load_numpy(data, "test")[0][0]
    context = video[:info["input"]["frames_per_step"]]
    response = requests.post(f"{base}/v1/models/fc-cluster-int8/predict", timeout=120,
                             json={"frames": [encode_png(f) for f in context]})
    assert response.status_code == 200, response.text
    assert np.asarray(response.json()["frames"]).shape == (len(context),)
    stop_job(cluster, job_id)
    assert not http_ok(f"{base}/healthz")
