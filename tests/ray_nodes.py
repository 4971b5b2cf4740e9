"""Ray nodes started with Ray's own CLI for the multi-node tests: several `ray start` on one
machine, each with ports of its own (node manager, object manager, worker range, agents), or
they collide at random (ray#10154, #18053). Each node runs `ray start --block` in its own
process group, so stopping it stops that node only (`ray stop` would stop every Ray here)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # the virtualenv's bin: ray, mlflow, python


def free_port() -> int:
    """A free port outside the kernel's ephemeral range and Ray's default worker ports
    (10002-19999) and the worker ranges below."""
    while True:
        port = random.randint(20000, 29999)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def node_env() -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    return env


def ray_start(*, cpus: float, resources: dict[str, float], head_port: int | None = None,
              address: str | None = None, temp_dir: Path | None = None,
              dashboard_port: int | None = None) -> list[str]:
    """`ray start --block` for a head (`head_port`, `dashboard_port`) or a node joining
    `address` (host:port of the head's GCS), every port its own."""
    low = random.randrange(30000, 39000, 200)  # this node's worker ports: low..low+199
    cmd = [str(BIN / "ray"), "start", "--block", "--node-ip-address", "127.0.0.1",
           "--num-cpus", f"{cpus:g}", "--resources", json.dumps(resources),
           "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
           "--min-worker-port", str(low), "--max-worker-port", str(low + 199),
           "--dashboard-agent-listen-port", str(free_port()),
           "--dashboard-agent-grpc-port", str(free_port()),
           "--metrics-export-port", str(free_port()),
           "--runtime-env-agent-port", str(free_port()), "--disable-usage-stats"]
    if head_port is not None:
        cmd += ["--head", "--port", str(head_port), "--dashboard-host", "127.0.0.1",
                "--dashboard-port", str(dashboard_port or free_port()),
                "--ray-client-server-port", str(free_port())]
    else:
        cmd += ["--address", address]
    if temp_dir is not None:
        cmd += ["--temp-dir", str(temp_dir)]
    return cmd


def start(cmd: list[str], *, private_tmpfs: Path | None = None) -> subprocess.Popen:
    """Run a `ray start --block` command in its own process group. `private_tmpfs`: run it in a
    mount namespace of its own with an empty tmpfs over that folder, so the node (and every
    worker it starts) sees a different folder at that path than the rest of the machine."""
    if private_tmpfs is not None:
        script = (f"mount -t tmpfs tmpfs {private_tmpfs} && exec "
                  + " ".join(f"'{c}'" for c in cmd))
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script]
    return subprocess.Popen(cmd, env=node_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def mlflow_server(store: Path, port: int) -> subprocess.Popen:
    """An MLflow tracking server on 127.0.0.1:`port` over a SQLite store and an artifact folder
    in `store` (created), in its own process group (`stop` stops it)."""
    store.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{store}/mlflow.db",
         "--artifacts-destination", str(store / "artifacts")],
        env={**node_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def stop(*procs: subprocess.Popen) -> None:
    """SIGTERM each node's process group, SIGKILL what is left after 60 s."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def alive_nodes(address: str) -> list[dict]:
    """The alive nodes of the cluster whose GCS is at `address`, from a fresh Python (this
    process keeps its own Ray, if any, untouched)."""
    code = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR', "
            "log_to_driver=False); print(json.dumps([n for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code], env=node_env(), capture_output=True,
                         text=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else []


def wait_for_nodes(address: str, count: int, timeout: float = 180.0) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        nodes = alive_nodes(address)
        if len(nodes) >= count:
            return nodes
        time.sleep(2)
    raise TimeoutError(f"{count} Ray nodes not alive after {timeout:.0f} s")
