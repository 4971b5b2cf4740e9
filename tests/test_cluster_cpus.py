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
