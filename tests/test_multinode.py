"""Every job on a real two-node Ray cluster on this machine (slow), through `ray job submit`,
with where things ran asserted, not only that they finished.

The cluster is the recipe of docs/cluster.md ("Multi-node"): a head started with `ray start
--head` and a second node with `ray start --address`, each with ports of its own, 2 logical
CPUs, a resource naming it (node_a, node_b) and one `trainer` slot; the second node runs in a
mount namespace of its own with a private tmpfs over one folder, the only folder the nodes do
not share. An MLflow server holds runs and artifacts. Then: a render whose Ray Data actors run
on both nodes; `jobs.train --workers 2 --placement STRICT_SPREAD`, one worker per node, from
the rendered set and from a stream (`--stream`: every sequence fresh and read once); a Tune
study of two trials, one per node (`worker_resources: trainer=1`); Serve with 2 replicas, one
per node, and its ingress on the head; and a job whose --storage only the head sees, refused
before any work.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import ray_nodes
import requests
import yaml
from test_cluster_path import BIN, http_ok, job_status, start_job, stop_job, submit, wait_for

pytestmark = pytest.mark.slow

NODE_TAG = "framecast.node.rank{}"


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Head (node_a) + second node (node_b, a private tmpfs over `private`) + MLflow server."""
    tmp = tmp_path_factory.mktemp("multinode")
    private = tmp / "private"
    private.mkdir()
    gcs, dashboard, mlflow_port = (ray_nodes.free_port() for _ in range(3))
    temp_dir = Path("/tmp") / f"ray-mn-{os.getpid()}"  # Ray needs a short socket path
    head = ray_nodes.start(ray_nodes.ray_start(
        cpus=2, resources={"node_a": 1, "trainer": 1}, head_port=gcs, dashboard_port=dashboard,
        temp_dir=temp_dir))
    env = ray_nodes.node_env()
    server = ray_nodes.mlflow_server(tmp / "mlflow", mlflow_port)
    procs = [server, head]
    try:
        address, tracking = f"http://127.0.0.1:{dashboard}", f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: http_ok(f"{address}/api/version"), "ray dashboard (job server)", 300)
        # A temp dir of its own, as on another machine: in the head's, both nodes' runtime-env
        # agents unpack a job's working dir into one folder, and the job's cwd vanished once.
        node = ray_nodes.start(ray_nodes.ray_start(
            cpus=2, resources={"node_b": 1, "trainer": 1}, address=f"127.0.0.1:{gcs}",
            temp_dir=Path(f"{temp_dir}-b")), private_tmpfs=private)
        procs.append(node)
        wait_for(lambda: http_ok(f"{tracking}/health"), "mlflow server", 300)
        nodes = ray_nodes.wait_for_nodes(f"127.0.0.1:{gcs}", 2)
        ids = {name: n["NodeID"] for n in nodes for name in ("node_a", "node_b")
               if name in n["Resources"]}
        assert len(ids) == 2
        yield {"address": address, "tracking": tracking, "env": env, "nodes": ids,
               "tmp": tmp, "private": private}
    finally:
        ray_nodes.stop(*reversed(procs))
        subprocess.run(["rm", "-rf", str(temp_dir), f"{temp_dir}-b"], check=False)


def runs(tracking: str, query: str) -> list:
    client = mlflow.MlflowClient(tracking)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], query)


def test_every_job_runs_on_both_nodes(two_nodes):
    cluster, tmp, nodes = two_nodes, two_nodes["tmp"], two_nodes["nodes"]
    both = set(nodes.values())
    data, storage = tmp / "data", tmp / "ray_results"
    timings = {}

    begin = time.time()
    logs = submit(cluster, "jobs.render", "--kind", "2d", "--num-sequences", "32", "--frames",
                  "4", "--size", "16", "--workers", "2", "--batch-size", "2", "--out", str(data))
    timings["render"] = time.time() - begin
    assert f"{data.parent} is shared by all 2 nodes" in logs, logs[-2000:]
    line = next(x for x in logs.splitlines() if "sequences per Ray node" in x)
    per_node = json.loads(line.split(": ", 2)[2])
    assert set(per_node) == both and sum(per_node.values()) == 32, per_node

    begin = time.time()
    logs = submit(cluster, "jobs.train", "--data", str(data), "--preset", "tiny", "--steps", "4",
                  "--batch-size", "2", "--checkpoint-every", "2", "--log-every", "2",
                  "--workers", "2", "--placement", "STRICT_SPREAD", "--storage", str(storage),
                  "--name", "mn-train", "--register", "fc-mn")
    timings["train"] = time.time() - begin
    assert "shared by all 2 nodes" in logs and "registered as fc-mn" in logs, logs[-2000:]
    (run,) = runs(cluster["tracking"], "tags.`framecast.ray_run` = 'mn-train'")
    placed = {run.data.tags[NODE_TAG.format(r)] for r in (0, 1)}
    assert placed == both  # one worker per node
    assert len([p for p in storage.glob("mn-train/checkpoint_*") if p.is_dir()]) == 2

    # A stream: both workers read sequences rendered as they train, each sequence once.
    begin = time.time()
    submit(cluster, "jobs.train", "--data", str(data), "--preset", "tiny", "--steps", "4",
           "--batch-size", "2", "--checkpoint-every", "4", "--log-every", "2", "--workers", "2",
           "--placement", "STRICT_SPREAD", "--stream", "true", "--stream-actors", "2",
           "--storage", str(storage), "--name", "mn-stream", "--register", "none")
    timings["stream"] = time.time() - begin
    (run,) = runs(cluster["tracking"], "tags.`framecast.ray_run` = 'mn-stream'")
    client = mlflow.MlflowClient(cluster["tracking"])
    indices = []
    for rank in (0, 1):
        path = client.download_artifacts(run.info.run_id, f"stream/indices_rank{rank}.json",
                                         str(tmp))
        indices += json.loads(Path(path).read_text())
    assert len(indices) == 2 * 4 * 2 == len(set(indices))  # 2 workers x 4 steps x batch 2
    assert min(indices) >= 32  # none of the data set's own (val, test) sequences
    assert {run.data.tags[NODE_TAG.format(r)] for r in (0, 1)} == both

    space = tmp / "mn-study.yaml"
    space.write_text(yaml.safe_dump({
        "name": "mn-study", "job": "train",
        "base": {"model": "vblt", "preset": "tiny", "steps": 4, "batch_size": 2,
                 "log_every": 2, "checkpoint_every": 2, "eval_every": 2, "eval_sequences": 2,
                 "worker_resources": "trainer=1"},  # one trainer slot per node
        "params": {"lr": {"grid": [0.001, 0.002]}}, "metric": "val_psnr", "mode": "max",
        "scheduler": "fifo", "trial_resources": {"cpu": 1}}))
    begin = time.time()
    logs = submit(cluster, "jobs.tune", "--space", str(space), "--data", str(data),
                  "--storage", str(storage), "--name", "mn-study")
    timings["tune"] = time.time() - begin
    assert "shared by all 2 nodes" in logs, logs[-2000:]
    trials = runs(cluster["tracking"], "tags.`framecast.tune_study_member` = 'mn-study'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    assert {t.data.tags[NODE_TAG.format(0)] for t in trials} == both  # one trial per node

    begin = time.time()
    port = ray_nodes.free_port()
    job_id = start_job(cluster, "jobs.serve", "--model", "fc-mn", "--alias", "latest",
                       "--port", str(port), "--min-replicas", "2", "--max-replicas", "2")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http_ok(f"{base}/healthz") or "failed" in job_status(cluster, job_id),
                 "the served model", timeout=300)
        assert http_ok(f"{base}/healthz"), job_status(cluster, job_id)
        replicas = serve_replica_nodes(cluster["address"])
        timings["serve"] = time.time() - begin
        assert len(replicas) == 2 and set(replicas) == both, replicas
        # The ingress on the head (node_a), where node_b's loss cannot take it.
        assert serve_replica_nodes(cluster["address"], ingress=True) == [nodes["node_a"]]
        info = requests.get(f"{base}/v1/models/fc-mn", timeout=30)
        assert info.status_code == 200, info.text
    finally:
        stop_job(cluster, job_id)

    # --storage on the folder node_b sees privately: refused before any work, naming both.
    begin = time.time()
    job_id = start_job(cluster, "jobs.train", "--data", str(data), "--preset", "tiny",
                       "--steps", "2", "--batch-size", "2", "--storage",
                       str(cluster["private"]), "--name", "mn-refused")
    wait_for(lambda: any(f"{job_id.lower()}' {s}" in job_status(cluster, job_id)
                         for s in ("succeeded", "failed")), "the refused job", timeout=300)
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", cluster["address"],
                           job_id], env=cluster["env"], capture_output=True, text=True,
                          timeout=60).stdout
    timings["refusal"] = time.time() - begin
    assert "failed" in job_status(cluster, job_id)
    assert (f"--storage {cluster['private']} is not shared storage: node {nodes['node_b']}"
            in logs), logs[-2000:]
    assert not runs(cluster["tracking"], "tags.`framecast.ray_run` = 'mn-refused'")
    print("\nmulti-node seconds per job: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                        timings.items()))


def serve_replica_nodes(address: str, ingress: bool = False) -> list[str]:
    """The node ids of the alive model replicas (or, `ingress`, of the ingress's), from Ray's
    state API."""
    from ray.util.state import list_actors

    def replicas():
        actors = list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000,
                             raise_on_missing_output=False)
        return [a.node_id for a in actors if a.class_name.startswith("ServeReplica:")
                and ("Ingress" in a.class_name) == ingress]

    wait_for(lambda: len(replicas()) >= (1 if ingress else 2), "the replicas", timeout=120)
    return replicas()
