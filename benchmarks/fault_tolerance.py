"""Fault tolerance, measured: kill a Ray Train worker, interrupt a render, kill a Serve replica,
kill a Ray node under Serve load, under a 2-worker training run and under a Tune study.

    python benchmarks/fault_tolerance.py --quick    # ~300 s on 2 quiet cores (no tune_node)
    python benchmarks/fault_tolerance.py            # the same scenarios, larger

Each scenario injects a real fault (SIGKILL of a real process, or every process of a Ray node)
into the real job and reports what it cost: training steps recomputed and seconds to recover; a
render's partial output and the rerun that repairs it; failed HTTP requests and client latency
while Serve loses a replica or a node. The node scenarios start a Ray cluster of their own
(ray.cluster_utils.Cluster: a head and worker nodes on this machine). The slow tests in
tests/test_faults.py run the same functions and assert the guarantees.
"""

from __future__ import annotations

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

from benchmarks.lib.cli import new_parser  # noqa: E402
from benchmarks.lib.cluster import ray_cluster  # noqa: E402
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
            time.sleep(0.05)
        # Killed at once: on a quiet machine a small render commits its staging folder well
        # within half a second of its first shard, and the kill then found nothing partial.
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


def _serve_replicas(model: str) -> list:
    """The ALIVE replica actors (Ray state API ActorState: pid, actor_id, node_id) of deployment
    `model` of SERVE_APP ('Ingress': the ingress), on this Ray only."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", f"ServeReplica:{SERVE_APP}:{model}"),
                                  ("state", "=", "ALIVE")], raise_on_missing_output=False)
    return [a for a in actors if a.pid]


def _serve_replica_pids(model: str) -> list[int]:
    return [a.pid for a in _serve_replicas(model)]


def _running_replicas(model: str) -> int:
    """How many replicas of `model` Serve's controller counts as RUNNING."""
    from ray import serve

    app = serve.status().applications.get(SERVE_APP)
    deployment = app.deployments.get(model) if app else None
    return int(deployment.replica_states.get("RUNNING", 0)) if deployment else 0


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


def _serve_args(replicas: int, num_cpus: float, ingress_cpus: float = 0.1) -> dict:
    from framecast.tracking import default_tracking_uri

    return {"models": [{"name": SERVE_MODEL, "alias": "latest", "num_cpus": num_cpus,
                        "min_replicas": replicas, "max_replicas": replicas,
                        "torch_threads": 1}],
            "tracking_uri": default_tracking_uri(), "ingress_cpus": ingress_cpus}


def _predict_body() -> dict:
    """One /predict request: 4 random context frames of SERVE_FRAME_SHAPE as PNGs in JSON."""
    import numpy as np

    from serve.codec import encode_png

    frames = np.random.default_rng(0).integers(0, 256, (4, *SERVE_FRAME_SHAPE[1:]),
                                               dtype=np.uint8)
    return {"frames": [encode_png(f) for f in frames]}


Record = tuple[float, float, str]  # (start, end) in time.monotonic(), "200" or why it failed


def _post(session, url: str, body: dict, version: str) -> Record:
    """POST `body` to `url` once: (start, end, "200", "wrong model", "<status> <error code>" or
    the connection error's type)."""
    import requests as http

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
    return start, time.monotonic(), outcome


class SteadyLoad:
    """`threads` HTTP clients, each sending the next request as soon as its last one answered,
    from `with` until the block ends; every request in `records`."""

    def __init__(self, url: str, body: dict, version: str, threads: int) -> None:
        self.url, self.body, self.version = url, body, version
        self.records: list[Record] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True)
                         for _ in range(threads)]

    def _client(self) -> None:
        import requests as http

        with http.Session() as session:
            while not self._stop.is_set():
                self.records.append(_post(session, self.url, self.body, self.version))

    def __enter__(self) -> SteadyLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)


def _latency(records: list[Record], start: float, end: float) -> dict[str, float]:
    """p50, p99 and max client latency (ms) of the requests sent in [start, end) that
    succeeded, and how many were sent."""
    import numpy as np

    sent = [r for r in records if start <= r[0] < end]
    ms = [(r[1] - r[0]) * 1e3 for r in sent if r[2] == "200"]
    if not ms:
        return {"n": len(sent), "p50_ms": float("nan"), "p99_ms": float("nan"),
                "max_ms": float("nan")}
    return {"n": len(sent), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": max(ms)}


def _failures(records: list[Record]) -> tuple[int, str]:
    """(failed requests, '3x 503 unavailable, ...')."""
    reasons: dict[str, int] = {}
    for r in records:
        if r[2] != "200":
            reasons[r[2]] = reasons.get(r[2], 0) + 1
    return sum(reasons.values()), ", ".join(f"{n}x {k}" for k, n in sorted(reasons.items()))


def _phases(records: list[Record], before: float, kill: float, recovered: float, end: float
            ) -> dict[str, float]:
    """Latency of the requests sent before the kill ([before, kill)), during the recovery
    ([kill, recovered)) and after it ([recovered, end)), as flat keys."""
    out: dict[str, float] = {}
    for phase, (lo, hi) in {"before": (before, kill), "during": (kill, recovered),
                            "after": (recovered, end)}.items():
        out.update({f"{k}_{phase}": v for k, v in _latency(records, lo, hi).items()})
    return out


def _first_request_on(actor_id: str) -> float | None:
    """When (time.time()) the replica actor `actor_id` started its first request, from Ray's
    task events; None when it has none (yet)."""
    import ray
    from ray.util.state import list_tasks

    tasks = list_tasks(address=ray.get_runtime_context().gcs_address,
                       filters=[("actor_id", "=", actor_id)], detail=True, limit=10000,
                       raise_on_missing_output=False)
    starts = [t.start_time_ms for t in tasks
              if "handle_request" in (t.name or "") and t.start_time_ms]
    return min(starts) / 1000 if starts else None


def serve_replica_kill(root: Path, requests: int = 300, concurrency: int = 8,
                       kill_fraction: float = 0.3) -> dict[str, float | str]:
    """Serve a tiny V-BLT with the project's app (one model replica) and send `requests` predict
    calls over HTTP, `concurrency` at a time; once `kill_fraction` of them have answered, SIGKILL
    the model replica. Serve replaces it. Counts the requests that failed (non-200 or a connection
    error) and the seconds from the kill until the first request sent after it succeeded."""
    import requests as http
    from ray import serve

    from jobs.serve import free_port, start_serve, stop_app
    from serve.app import build_app

    del root  # the model goes to the MLflow store of FRAMECAST_HOME, like every registered one
    version = _register_tiny_serve_model()
    base, started = start_serve("127.0.0.1", free_port())
    args = _serve_args(replicas=1, num_cpus=0.5)
    url = f"{base}/{SERVE_APP}/v1/models/{SERVE_MODEL}/predict"
    body = _predict_body()
    kill_after = max(1, int(requests * kill_fraction))
    local = threading.local()
    records: list[Record] = []

    def one() -> None:
        session = getattr(local, "session", None) or http.Session()
        local.session = session
        records.append(_post(session, url, body, version))

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
    failed, kinds = _failures(records)
    later_ok = [end for start, end, outcome in records if start > kill_time and outcome == "200"]
    recovered = min(later_ok) if later_ok else float("nan")
    after = [r for r in records if r[0] >= recovered]
    return {"requests": len(records), "concurrency": concurrency,
            "killed_after": kill_after, "failed": failed,
            "failed_before_kill": sum(r[1] < kill_time and r[2] != "200" for r in records),
            "failure_kinds": kinds,
            "recovery_s": recovered - kill_time,
            "replica_restart_s": (replaced_at - kill_time) if replaced_at else float("nan"),
            "after_recovery": len(after),
            "after_recovery_failed": sum(r[2] != "200" for r in after) if later_ok else -1,
            "replica_replaced": int(new_pid is not None and new_pid != killed_pid)}


def _wait(condition, timeout: float, every: float = 0.25) -> float | None:
    """Poll `condition()` until true; time.monotonic() then, or None after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(every)
    return None


def serve_two_replicas_kill(root: Path, threads: int = 4, warmup_s: float = 3.0,
                            before_s: float = 10.0, after_s: float = 10.0
                            ) -> dict[str, float | str]:
    """Serve a tiny V-BLT with 2 replicas (0.5 CPU each) on the local Ray; `threads` clients
    send /predict one request after another. After `before_s` s of load, SIGKILL one replica's
    process; Serve starts a replacement while the other replica answers. Reports the failed
    requests and client latency before the kill, during the recovery (until the replacement
    took its first request) and `after_s` s after it, and when the replacement was up (ALIVE),
    RUNNING in Serve's view, and serving."""
    from ray import serve

    from jobs.serve import free_port, start_serve, stop_app
    from serve.app import build_app

    del root
    version = _register_tiny_serve_model()
    base, started = start_serve("127.0.0.1", free_port())
    url = f"{base}/{SERVE_APP}/v1/models/{SERVE_MODEL}/predict"
    try:
        serve.run(build_app(_serve_args(replicas=2, num_cpus=0.5)), name=SERVE_APP,
                  route_prefix=f"/{SERVE_APP}")
        replicas = _serve_replicas(SERVE_MODEL)
        if len(replicas) != 2:
            raise RuntimeError(f"expected 2 replicas of {SERVE_MODEL}, found {replicas}")
        victim = replicas[0]
        with SteadyLoad(url, _predict_body(), version, threads) as load:
            time.sleep(warmup_s)
            measured_from = time.monotonic()
            time.sleep(before_s)
            os.kill(victim.pid, signal.SIGKILL)
            kill, kill_wall = time.monotonic(), time.time()
            new: list = []

            def replaced() -> bool:
                new[:] = [a for a in _serve_replicas(SERVE_MODEL)
                          if a.actor_id not in {r.actor_id for r in replicas}]
                return bool(new)

            up = _wait(replaced, 180)
            running = _wait(lambda: _running_replicas(SERVE_MODEL) >= 2, 180) if up else None
            time.sleep(after_s)
            end = time.monotonic()
        first = _first_request_on(new[0].actor_id) if new else None
    finally:
        stop_app(SERVE_APP, started)
    # The replacement serves from its first request (Ray's task events), else from RUNNING.
    serving = (kill + first - kill_wall) if first else running
    failed, kinds = _failures(load.records)
    return {"requests": len(load.records), "threads": threads, "failed": failed,
            "failure_kinds": kinds,
            "replica_up_s": (up - kill) if up else float("nan"),
            "replica_running_s": (running - kill) if running else float("nan"),
            "replica_serving_s": (serving - kill) if serving else float("nan"),
            "replica_replaced": int(bool(new)),
            **_phases(load.records, measured_from, kill, serving or end, end)}


def _node_alive(node_id: str) -> bool:
    import ray

    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


def _kill_node(cluster, node) -> tuple[float, float]:
    """SIGKILL every process of Ray node `node` (raylet, agents; its workers exit with their
    raylet); (time.monotonic(), time.time()) of the kill."""
    when = time.monotonic(), time.time()
    cluster.remove_node(node, allow_graceful=False)
    return when


def serve_node_kill(root: Path, threads: int = 4, warmup_s: float = 3.0,
                    before_s: float = 10.0, after_s: float = 10.0) -> dict[str, float | str]:
    """Serve a tiny V-BLT with 2 replicas, one per node, on a 2-node cluster (the ingress and
    one replica on the head, the other replica on a worker node); `threads` clients send
    /predict one request after another. After `before_s` s, kill the worker node (every
    process of it, SIGKILL). The ingress sends the calls the dead replica held again, to the
    survivor. Reports failed requests and client latency before the kill, during the recovery
    (until the GCS marks the node dead) and `after_s` s after it (one replica)."""
    from ray import serve

    from jobs.serve import free_port
    from serve.app import build_app

    del root
    # Both nodes first, then the app, as a user deploys on a running cluster: the ingress goes
    # on the head by its own placement (serve.app.ingress_on_head), the replicas (0.8 CPU of
    # each node's 1) one per node.
    with ray_cluster(num_cpus=1) as cluster:
        version = _register_tiny_serve_model()
        worker = cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1",
                                                             "port": port})
        url = f"http://127.0.0.1:{port}/{SERVE_APP}/v1/models/{SERVE_MODEL}/predict"
        try:
            serve.run(build_app(_serve_args(replicas=2, num_cpus=0.8, ingress_cpus=0.1)),
                      name=SERVE_APP, route_prefix=f"/{SERVE_APP}")
            if _running_replicas(SERVE_MODEL) != 2:
                raise RuntimeError("the app did not start 2 replicas")
            head_id = cluster.head_node.node_id
            placed = {a.node_id for a in _serve_replicas(SERVE_MODEL)}
            ingress_nodes = {a.node_id for a in _serve_replicas("Ingress")}
            if placed != {head_id, worker.node_id} or ingress_nodes != {head_id}:
                raise RuntimeError(f"replicas on {placed}, ingress on {ingress_nodes}; expected "
                                   f"one replica per node and the ingress on the head")
            with SteadyLoad(url, _predict_body(), version, threads) as load:
                time.sleep(warmup_s)
                measured_from = time.monotonic()
                time.sleep(before_s)
                kill, _ = _kill_node(cluster, worker)
                dead = _wait(lambda: not _node_alive(worker.node_id), 180, every=0.5)
                one_left = _wait(lambda: len(_serve_replicas(SERVE_MODEL)) == 1, 60)
                time.sleep(after_s)
                end = time.monotonic()
            survivors = {a.node_id for a in _serve_replicas(SERVE_MODEL)}
        finally:
            serve.shutdown()
    failed, kinds = _failures(load.records)
    recovered = dead or end
    return {"requests": len(load.records), "threads": threads, "failed": failed,
            "failure_kinds": kinds, "node_dead_s": (dead - kill) if dead else float("nan"),
            "replica_gone_s": (one_left - kill) if one_left else float("nan"),
            "survivor_on_head": int(survivors == {head_id}),
            **_phases(load.records, measured_from, kill, recovered, end)}


def _resumed_at(history: list, kill_time: float) -> float | None:
    """When (time.time()) the restarted workers logged their first step: the first metric
    logged after `kill_time` whose step is not past the one logged before it (the run went
    back to its checkpoint), else the first logged after the kill."""
    after = sorted((m.timestamp / 1000, m.step) for m in history)
    previous = None
    for when, step in after:
        if when > kill_time and previous is not None and step <= previous:
            return when
        previous = step
    later = [when for when, _ in after if when > kill_time]
    return min(later) if later else None


def train_node_kill(root: Path, steps: int = 120, checkpoint_every: int = 20,
                    kill_after: int = 30) -> dict[str, float]:
    """`jobs.train --workers 2 --placement STRICT_SPREAD` on a 2-node cluster (2 CPUs and one
    `trainer` slot each; one worker per node); once `kill_after` steps are logged and a
    checkpoint is stored, kill the worker node (every process, SIGKILL). Policy: once the GCS
    marks the node dead, a replacement node (the same resources) joins, as an autoscaler would
    start one; Ray Train (--max-failures 2) restarts both workers from the last checkpoint
    (until then it cannot place 2 workers on 2 distinct nodes and waits). Counts the steps
    recomputed and the MLflow runs; the run must end at `steps`."""
    import mlflow

    from framecast import tracking
    from jobs.train import TrainJobConfig, train

    resources = {"num_cpus": 2, "resources": {"trainer": 1}}
    with ray_cluster(**resources) as cluster:
        worker = cluster.add_node(**resources)
        data = _tiny_data(root)
        name = f"fault-node-train-{int(time.time())}"
        config = TrainJobConfig(data=str(data), preset="tiny", steps=steps, batch_size=4,
                                checkpoint_every=checkpoint_every, log_every=1, eval_every=steps,
                                eval_sequences=2, workers=2, placement="STRICT_SPREAD",
                                worker_resources="trainer=1", max_failures=2, name=name,
                                storage=str(root / "ray"), register="none",
                                experiment="framecast-faults")
        outcome: dict = {}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                outcome.update(train(config))
            except BaseException as err:  # reported below
                errors.append(err)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        tracking.use_experiment(config.experiment)
        client = mlflow.MlflowClient()
        run_id, killed_at, kill_wall, dead, replaced, on_killed = None, None, None, None, None, 0
        kill = None
        deadline = time.time() + 900
        while thread.is_alive() and time.time() < deadline and killed_at is None:
            if run_id is None:
                found = mlflow.search_runs(experiment_names=[config.experiment],
                                           output_format="list",
                                           filter_string=f"tags.`framecast.ray_run` = '{name}'")
                run_id = found[0].info.run_id if found else None
            else:
                logged = client.get_metric_history(run_id, "loss")
                last = max((m.step for m in logged), default=0)
                stored = [p for p in (root / "ray" / name).glob("checkpoint_*") if p.is_dir()]
                if last >= kill_after and stored:
                    on_killed = len(_train_workers_on(worker.node_id))
                    kill, kill_wall = _kill_node(cluster, worker)
                    killed_at = last
            time.sleep(0.2)
        if kill is not None:  # the policy: a new node once the old one is marked dead
            dead = _wait(lambda: not _node_alive(worker.node_id), 180, every=0.5)
            replacement = cluster.add_node(**resources)
            replaced = time.monotonic()
        thread.join(timeout=max(1.0, deadline - time.time()))
        workers_on_replacement = (_node_tags(client, run_id, replacement.node_id)
                                  if kill is not None else 0)
    if errors or killed_at is None or "step" not in outcome:
        raise RuntimeError(f"the scenario did not run through: killed_at={killed_at}, "
                           f"outcome={sorted(outcome)}, errors={errors!r}")
    history = client.get_metric_history(run_id, "loss")
    steps_seen = [m.step for m in history]
    resumed = _resumed_at(history, kill_wall)
    runs = mlflow.search_runs(experiment_names=[config.experiment], output_format="list",
                              filter_string=f"tags.`framecast.ray_run` = '{name}'")
    return {"steps": steps, "checkpoint_every": checkpoint_every, "killed_at_step": killed_at,
            "workers_on_killed_node": on_killed,
            "steps_lost": len(steps_seen) - len(set(steps_seen)), "final_step": outcome["step"],
            "node_dead_s": (dead - kill) if dead else float("nan"),
            "replacement_s": replaced - kill,
            "resumed_s": (resumed - kill_wall) if resumed else float("nan"),
            "workers_on_replacement": workers_on_replacement, "mlflow_runs": len(runs)}


def tune_node_kill(root: Path, steps: int = 20, checkpoint_every: int = 5) -> dict[str, float]:
    """A Tune study of 3 training trials on a 3-node cluster: the head (the driver, Tune's
    controller, no `trainer` slot) and two worker nodes with one `trainer` slot each, so 2
    trials train at once, one per worker node, and the third waits for a slot. Once a trial
    has finished, the third has taken its slot and every trial has logged a step, and nothing
    is starting on the cluster (`_settled`: no placement group waits, no Ray Train or Tune
    actor is being created), kill a worker node that trains a trial (every process, SIGKILL).
    The third trial always trains on a worker node, so that moment always comes. (A kill 0.6 s
    into a trial's start-up once left a `trainer` slot reserved by a placement group nobody
    used, and the hit trial's retry waited on it until the test's timeout; with the head's
    slot, the moment came only when the survivor on the worker node outlasted the third's
    start-up of up to 26 s.) No node replaces it: the rest of the study runs on the other worker
    node. The trial that lost its worker is retried by Ray Train from its checkpoint
    (--max-failures 1) or, when its trial process died with the node, marked failed by the
    study (Tune's max_failures=0). The trials differ in length (a grid over steps: steps,
    2 * steps, 3 * steps). Reports the study's outcome per trial and whether a trial that had
    finished before the kill ran again."""
    import mlflow
    import yaml

    from jobs.train import NODE_TAG
    from jobs.tune import TRIAL_TAG, TuneJobConfig, tune_job

    with ray_cluster(num_cpus=2) as cluster:
        workers = {}
        for _ in range(2):
            node = cluster.add_node(num_cpus=2, resources={"trainer": 1})
            workers[node.node_id] = node
        data = _tiny_data(root)
        name = f"fault-tune-{int(time.time())}"
        space = root / f"{name}.yaml"
        space.write_text(yaml.safe_dump({
            "name": name, "job": "train",
            "base": {"model": "vblt", "preset": "tiny", "lr": 0.002, "batch_size": 2,
                     "log_every": 1, "checkpoint_every": checkpoint_every, "eval_every": 1000,
                     "eval_sequences": 2, "worker_resources": "trainer=1"},
            "params": {"steps": {"grid": [steps, 2 * steps, 3 * steps]}},
            "metric": "val_psnr",
            "mode": "max", "scheduler": "fifo", "trial_resources": {"cpu": 1}}))
        outcome: dict = {}
        errors: list[BaseException] = []

        def run() -> None:
            try:
                outcome.update(tune_job(TuneJobConfig(space=str(space), data=str(data),
                                                      storage=str(root / "ray"), name=name)))
            except BaseException as err:  # reported below
                errors.append(err)

        def children() -> list:
            return mlflow.search_runs(search_all_experiments=True, output_format="list",
                                      filter_string=f"tags.`{TRIAL_TAG}` LIKE '{name}/%'")

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        kill_wall, finished_before, hit = None, {}, []
        deadline = time.time() + 900
        while thread.is_alive() and time.time() < deadline and kill_wall is None:
            runs = children()
            done = {r.data.tags[TRIAL_TAG]: r for r in runs if r.info.status == "FINISHED"}
            running = [r for r in runs if r.info.status == "RUNNING"]
            # A running trial's rank 0 tag names the node its worker trains on.
            on = {r.data.tags[TRIAL_TAG]: r.data.tags.get(NODE_TAG.format(0)) for r in running}
            started = len(runs) == 3 and all("loss" in r.data.metrics for r in running)
            target = next((n for n in on.values() if n in workers), None)
            if (done and started and target and _train_workers_on(target)
                    and _settled()):
                _, kill_wall = _kill_node(cluster, workers[target])
                finished_before = {k: r.info.end_time for k, r in done.items()}
                hit = [k for k, n in on.items() if n == target]
            time.sleep(0.5)
        thread.join(timeout=max(1.0, deadline - time.time()))
    if errors or kill_wall is None or "rows" not in outcome:
        raise RuntimeError(f"the scenario did not run through: killed={kill_wall is not None}, "
                           f"outcome={sorted(outcome)}, errors={errors!r}")
    runs = children()
    per_trial: dict[str, list] = {}
    for r in runs:
        per_trial.setdefault(r.data.tags[TRIAL_TAG], []).append(r)
    client = mlflow.MlflowClient()

    def reran(key: str) -> bool:
        """More than one child run, a later end, or a step logged twice."""
        mine = per_trial.get(key, [])
        if len(mine) != 1 or mine[0].info.end_time != finished_before[key]:
            return True
        steps_seen = [m.step for m in client.get_metric_history(mine[0].info.run_id, "loss")]
        return len(steps_seen) != len(set(steps_seen))

    status = {f"{name}/{row['trial']}": row["status"] for row in outcome["rows"]}
    hit_status = [status.get(k, "?") for k in hit]
    return {"trials": len(outcome["rows"]),
            "finished": sum(s == "finished" for s in status.values()),
            "failed": sum(s == "failed" for s in status.values()),
            "finished_before_kill": len(finished_before),
            "finished_trials_rerun": sum(reran(k) for k in finished_before),
            "hit_trials": len(hit), "hit_retried": sum(s == "finished" for s in hit_status),
            "hit_marked_failed": sum(s == "failed" for s in hit_status)}


def _settled() -> bool:
    """Nothing is starting: no placement group waits or is being rescheduled, and no Ray Train
    or Tune actor is being created or restarted. (Ray Data's read actors come and go all
    through training, waiting for a CPU: they do not count.)"""
    import ray
    from ray.util.state import list_actors, list_placement_groups

    address = ray.get_runtime_context().gcs_address
    starting = list_actors(address=address, filters=[("state", "!=", "ALIVE"),
                                                     ("state", "!=", "DEAD")],
                           raise_on_missing_output=False)
    groups = list_placement_groups(address=address, filters=[("state", "!=", "CREATED"),
                                                             ("state", "!=", "REMOVED")],
                                   raise_on_missing_output=False)
    return not groups and not any(a.class_name in _TRIAL_ACTORS for a in starting)


# Ray Train's and Tune's actors of a trial (Tune's function trainable is an ImplicitFunc).
_TRIAL_ACTORS = frozenset({"ImplicitFunc", "TrainController", "RayTrainWorker",
                           "SynchronizationActor", "PlacementGroupCleaner"})


def _train_workers_on(node_id: str) -> list[int]:
    """PIDs of the ALIVE Ray Train workers on node `node_id`."""
    import ray
    from ray.util.state import list_actors

    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"),
                                  ("node_id", "=", node_id)], raise_on_missing_output=False)
    return [a.pid for a in actors if a.pid]


def _node_tags(client, run_id: str, node_id: str) -> int:
    """How many worker ranks of MLflow run `run_id` last ran on node `node_id` (its tags)."""
    from jobs.train import NODE_TAG

    tags = client.get_run(run_id).data.tags
    return sum(tags.get(NODE_TAG.format(rank)) == node_id for rank in range(8))


SCENARIOS = ("train", "render", "serve", "serve2", "serve_node", "train_node", "tune_node")
QUICK_SKIPS = ("tune_node",)  # --quick runs it only when --only names it (~2.5 min more)


def _ms(phases: dict, phase: str) -> str:
    return (f"p50 {phases[f'p50_ms_{phase}']:.0f} / p99 {phases[f'p99_ms_{phase}']:.0f} ms "
            f"({phases[f'n_{phase}']:.0f} sent)")


def _rows(got: dict[str, dict]) -> list[list[str]]:
    rows = []
    if "train" in got:
        train = got["train"]
        rows.append(["Ray Train worker SIGKILL", f"step {train['killed_at_step']:.0f} of "
                     f"{train['steps']:.0f}, checkpoint every {train['checkpoint_every']:.0f}",
                     f"{train['steps_lost']:.0f} steps recomputed, {train['recovery_s']:.1f} s "
                     f"to the next step, final step {train['final_step']:.0f}, "
                     f"{train['mlflow_runs']:.0f} MLflow run"])
    if "render" in got:
        rendered = got["render"]
        rows.append(["render job SIGKILL mid-write", f"{rendered['partial_shards']:.0f} shard "
                     "files in staging, no manifest", "rerun detects and redoes it in "
                     f"{rendered['rerun_s']:.1f} s; {rendered['sequences_ok']:.0f} sequences "
                     "verify"])
    if "serve" in got:
        served = got["serve"]
        rows.append(["Serve model replica SIGKILL under load", f"{served['killed_after']:.0f} "
                     f"of {served['requests']:.0f} predict requests answered, "
                     f"{served['concurrency']:.0f} in flight, 1 replica",
                     f"{served['failed']:.0f} requests failed ({served['failure_kinds'] or 'none'}"
                     f"); {served['recovery_s']:.1f} s until a request sent after the kill "
                     f"succeeded (replacement replica up after {served['replica_restart_s']:.1f} "
                     f"s); {served['after_recovery_failed']:.0f} of the "
                     f"{served['after_recovery']:.0f} requests after that failed"])
    if "serve2" in got:
        s2 = got["serve2"]
        rows.append(["1 of 2 Serve replicas SIGKILL under steady load",
                     f"{s2['threads']:.0f} clients back to back; before: {_ms(s2, 'before')}",
                     f"{s2['failed']:.0f} of {s2['requests']:.0f} requests failed "
                     f"({s2['failure_kinds'] or 'none'}); during: {_ms(s2, 'during')}, slowest "
                     f"{s2['max_ms_during']:.0f} ms; replacement ALIVE after "
                     f"{s2['replica_up_s']:.1f} s, RUNNING {s2['replica_running_s']:.1f} s, first "
                     f"request {s2['replica_serving_s']:.1f} s; after: {_ms(s2, 'after')}"])
    if "serve_node" in got:
        sn = got["serve_node"]
        rows.append(["Ray node killed under Serve load (2 nodes, 1 replica each, ingress on "
                     "the head)", f"{sn['threads']:.0f} clients back to back; before: "
                     f"{_ms(sn, 'before')}",
                     f"{sn['failed']:.0f} of {sn['requests']:.0f} requests failed "
                     f"({sn['failure_kinds'] or 'none'}); until the node was marked dead "
                     f"({sn['node_dead_s']:.1f} s): {_ms(sn, 'during')}, slowest "
                     f"{sn['max_ms_during']:.0f} ms; after, on the head's replica alone: "
                     f"{_ms(sn, 'after')}"])
    if "train_node" in got:
        tn = got["train_node"]
        rows.append(["Ray node killed under a 2-worker training run (STRICT_SPREAD, one worker "
                     "per node)", f"step {tn['killed_at_step']:.0f} of {tn['steps']:.0f}, "
                     f"checkpoint every {tn['checkpoint_every']:.0f}; policy: a replacement node "
                     f"joins once the node is marked dead ({tn['node_dead_s']:.1f} s)",
                     f"{tn['steps_lost']:.0f} steps recomputed, {tn['resumed_s']:.1f} s from the "
                     f"kill to the first step of the restarted workers "
                     f"({tn['workers_on_replacement']:.0f} on the new node), final step "
                     f"{tn['final_step']:.0f}, {tn['mlflow_runs']:.0f} MLflow run"])
    if "tune_node" in got:
        tu = got["tune_node"]
        rows.append(["Ray node killed under a Tune study (3 training trials, one per worker "
                     "node at a time)",
                     f"{tu['finished_before_kill']:.0f} trial(s) finished, one training "
                     "on the lost node; no node replaces it",
                     f"the study ended: {tu['finished']:.0f} of {tu['trials']:.0f} trials "
                     f"finished, {tu['failed']:.0f} failed; the hit trial retried "
                     f"{tu['hit_retried']:.0f}, marked failed {tu['hit_marked_failed']:.0f}; "
                     f"{tu['finished_trials_rerun']:.0f} finished trials ran again"])
    return rows


def _values(got: dict[str, dict]) -> dict[str, float | int | str]:
    keys = {"train": {"train_steps_lost": "steps_lost", "train_recovery_s": "recovery_s",
                      "train_mlflow_runs": "mlflow_runs"},
            "render": {"render_partial_shards": "partial_shards", "render_rerun_s": "rerun_s"},
            "serve": {"serve_failed_requests": "failed", "serve_recovery_s": "recovery_s",
                      "serve_after_recovery_failed": "after_recovery_failed",
                      "serve_replica_replaced": "replica_replaced"},
            "serve2": {"serve2_failed_requests": "failed", "serve2_p50_ms_before": "p50_ms_before",
                       "serve2_p99_ms_before": "p99_ms_before",
                       "serve2_p50_ms_during": "p50_ms_during",
                       "serve2_p99_ms_during": "p99_ms_during",
                       "serve2_p99_ms_after": "p99_ms_after",
                       "serve2_replica_serving_s": "replica_serving_s"},
            "serve_node": {"node_serve_failed_requests": "failed",
                           "node_serve_p99_ms_before": "p99_ms_before",
                           "node_serve_p99_ms_during": "p99_ms_during",
                           "node_serve_p99_ms_after": "p99_ms_after",
                           "node_serve_dead_s": "node_dead_s"},
            "train_node": {"node_kill_steps_lost": "steps_lost",
                           "node_kill_mlflow_runs": "mlflow_runs",
                           "node_kill_final_step": "final_step",
                           "node_kill_resumed_s": "resumed_s"},
            "tune_node": {"tune_node_finished": "finished", "tune_node_failed": "failed",
                          "tune_node_finished_rerun": "finished_trials_rerun"}}
    values: dict[str, float | int | str] = {}
    for scenario, names in keys.items():
        for key, name in names.items():
            if scenario in got:
                value = got[scenario][name]
                values[key] = int(value) if isinstance(value, int) else float(value)
    return values


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="smaller scenarios (~300 s on 2 cores; tune_node only when "
                             "--only names it)")
    parser.add_argument("--only", default=None,
                        help=f"comma-separated scenarios to run (default: all of "
                             f"{', '.join(SCENARIOS)}; with --quick all but "
                             f"{', '.join(QUICK_SKIPS)})")
    args = parser.parse_args()
    if args.only is None:  # named scenarios always run; the default drops the long ones
        only = [s for s in SCENARIOS if not (args.quick and s in QUICK_SKIPS)]
    else:
        only = [s for s in args.only.split(",") if s]
    if unknown := set(only) - set(SCENARIOS):
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {', '.join(SCENARIOS)}")
    quick = args.quick
    got: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FRAMECAST_HOME", tmp)
        root = Path(tmp)
        # --quick: 48 steps (each report costs Ray Train time on 2 cores), kill at 25.
        if "train" in only:
            got["train"] = train_worker_kill(root, steps=48 if quick else 400,
                                             kill_after=25 if quick else 50)
        if "render" in only:
            got["render"] = render_interrupt(root, sequences=100 if quick else 800)
        if "serve" in only:
            got["serve"] = serve_replica_kill(root, requests=100 if quick else 600,
                                              concurrency=8 if quick else 16)
        window = {"before_s": 4.0, "after_s": 4.0} if quick else {"before_s": 20.0,
                                                                   "after_s": 20.0}
        if "serve2" in only:
            got["serve2"] = serve_two_replicas_kill(root, **window)
        import ray

        ray.shutdown()  # the node scenarios start clusters of their own
        if "serve_node" in only:
            got["serve_node"] = serve_node_kill(root, **window)
        if "train_node" in only:
            got["train_node"] = train_node_kill(root, steps=32 if quick else 200,
                                                checkpoint_every=10 if quick else 20,
                                                kill_after=15 if quick else 50)
        if "tune_node" in only:
            got["tune_node"] = tune_node_kill(root, steps=20 if quick else 40)
    table = markdown_table(["fault", "state at the fault", "cost"], _rows(got))
    notes = (f"{'quick' if quick else 'full'} scenarios ({', '.join(got)}) on "
             f"{os.cpu_count()} CPU cores; tiny V-BLT (log every step), 100-800 sequence "
             "renders; Serve: the app of serve/app.py with a random tiny V-BLT (0.5 CPU per "
             "replica, 0.8 on the 2-node cluster), 4 context frames of 16x16 as PNGs in JSON per "
             "request, client threads on the same cores; latency is client-side, of the "
             "requests sent in each phase that succeeded (the first 3 s of load are warm-up). "
             "Node scenarios: ray.cluster_utils.Cluster nodes on this machine, a node killed "
             "with every process it started (SIGKILL).")
    report("fault_tolerance", "Faults injected, costs measured", table, notes,
           f"RESULT fault_tolerance {key_values(_values(got))}")


if __name__ == "__main__":
    main()
