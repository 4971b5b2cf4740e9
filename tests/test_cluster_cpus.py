"""How many threads a Ray worker may use: its node's cores, never the whole cluster's."""

from __future__ import annotations

import os


def test_node_cpus_counts_this_node_and_this_process_affinity(ray_local):
    from framecast.cluster import node_cpus

    assert node_cpus() == min(2, len(os.sched_getaffinity(0)))  # ray_local: 2 CPUs

    @ray_local.remote(num_cpus=0)
    def on_one_core() -> int:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(before)})  # as a node pinned to one core would be
        try:
            return node_cpus()
        finally:
            os.sched_setaffinity(0, before)  # the worker goes back to Ray's pool

    assert ray_local.get(on_one_core.remote()) == 1


PINNED = """
import json, os, sys
sys.path.insert(0, {repo!r})
import ray
from benchmarks.lib.cluster import pin_node, ray_cluster

core = sorted(os.sched_getaffinity(0))[-1]
with ray_cluster(num_cpus=1) as cluster:
    node = cluster.add_node(num_cpus=1, resources={{"pinned": 1}})
    pinned = pin_node(node, [core])
    cluster.wait_for_nodes()

    @ray.remote(num_cpus=1, resources={{"pinned": 1}})
    def where() -> list:
        return sorted(os.sched_getaffinity(0))

    print(json.dumps({{"core": core, "pinned": pinned, "worker": ray.get(where.remote())}}))
"""


def test_pin_node_gives_a_node_and_the_workers_it_starts_later_their_own_cores():
    """The benchmarks' 2-node cluster on one machine: a pinned node's worker, started after the
    pinning, runs on the node's cores only (what makes it a machine of its own)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", PINNED.format(repo=repo)], capture_output=True,
                         text=True, timeout=240, cwd=repo)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["pinned"] >= 1 and got["worker"] == [got["core"]]
