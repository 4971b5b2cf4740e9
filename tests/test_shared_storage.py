"""The shared-storage check (framecast.cluster.check_shared_paths): nothing runs on one node; on
two nodes that see the same folders it passes and leaves nothing behind; a folder one node sees
differently (a private tmpfs over it, in a mount namespace of its own) is refused in one line
naming the folder and that node."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import ray_nodes

from framecast.cluster import check_shared_paths, local_path

CHECK = """
import json, sys
from framecast.cluster import check_shared_paths, init_ray
from framecast.config import ConfigError
init_ray()
try:
    print(json.dumps({"nodes": check_shared_paths(json.loads(sys.argv[1]))}))
except ConfigError as err:
    print(json.dumps({"refused": str(err)}))
"""


def check_on(address: str, paths: dict[str, str]) -> dict:
    """check_shared_paths(paths) from a job process joined to the cluster at `address`."""
    env = {**ray_nodes.node_env(), "RAY_ADDRESS": address}
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(paths)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_uris_are_not_local_folders_and_file_uris_are():
    assert local_path("s3://bucket/ray_results") is None
    assert local_path("http://127.0.0.1:5001") is None
    assert local_path("mlflow-artifacts:/1/abc") is None
    assert local_path("file:///srv/mlruns/artifacts") == Path("/srv/mlruns/artifacts")
    assert local_path("relative") == Path("relative").resolve()


def test_on_one_node_nothing_is_checked(ray_local, tmp_path):
    # A folder no node has: had a task run, it would have failed to write its marker.
    assert check_shared_paths({"--storage": tmp_path / "missing"}) == 1


@pytest.fixture()
def head():
    """A Ray head (1 CPU, resource node_a) from ray.cluster_utils.Cluster; its GCS address."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "resources": {"node_a": 1}, "dashboard_port": ray_nodes.free_port()})
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.mark.slow
def test_two_nodes_that_see_the_same_folders_pass_and_keep_no_markers(head, tmp_path):
    head.add_node(num_cpus=1, resources={"node_b": 1})
    head.wait_for_nodes()
    data, storage = tmp_path / "data", tmp_path / "ray_results"
    data.mkdir()
    storage.mkdir()
    got = check_on(head.address, {"--data": str(data), "--storage": str(storage),
                                  "--bucket": "s3://not/checked"})
    assert got == {"nodes": 2}
    assert not list(data.iterdir()) and not list(storage.iterdir())  # markers removed


@pytest.mark.slow
def test_a_folder_one_node_sees_privately_is_refused_naming_it_and_that_node(head, tmp_path):
    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    node = ray_nodes.start(ray_nodes.ray_start(cpus=1, resources={"node_b": 1},
                                               address=head.address), private_tmpfs=private)
    try:
        nodes = ray_nodes.wait_for_nodes(head.address, 2)
        node_b = next(n for n in nodes if "node_b" in n["Resources"])
        got = check_on(head.address, {"--data": str(shared), "--storage": str(private)})
        message = got.get("refused", "")
        print(f"\n{message}")
        assert message.startswith(f"--storage {private} is not shared storage"), got
        assert f"node {node_b['NodeID']} ({node_b['NodeManagerAddress']})" in message
        assert "\n" not in message
        assert not list(shared.iterdir()) and not list(private.iterdir())
    finally:
        ray_nodes.stop(node)
