"""A Ray cluster of several nodes on this machine, for the benchmarks that need one
(ray.cluster_utils.Cluster: a head and the worker nodes the caller adds, each a raylet of its
own), and a way to give each node cores of its own, as separate machines would have."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence


@contextlib.contextmanager
def ray_cluster(**head: object) -> Iterator[object]:
    """A Ray cluster of nodes on this machine (ray.cluster_utils.Cluster), this process its
    driver, attached to the head: `head` is the head's add_node arguments (num_cpus,
    resources); the caller adds and removes worker nodes. Shut down at the end."""
    import ray
    from ray.cluster_utils import Cluster

    from jobs.serve import free_port

    if ray.is_initialized():
        raise RuntimeError("the node scenarios start a Ray cluster of their own: call them "
                           "before ray.init or after ray.shutdown (tests: in a fresh Python)")
    cluster = Cluster(initialize_head=True, head_node_args={
        "dashboard_port": free_port(), "dashboard_agent_listen_port": free_port(),
        "object_store_memory": 300 * 2**20, **head})
    try:
        # The driver joins the head's raylet (Ray prefers the head among nodes on one host).
        ray.init(address=cluster.address, log_to_driver=False, logging_level=logging.ERROR)
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def pin_node(node: object, cores: Sequence[int]) -> int:
    """Confine every process of Ray node `node` (a cluster_utils node: raylet, agents, the
    workers it already started) to `cores`; workers the raylet starts later inherit it. So two
    nodes on one machine do not share cores. Returns how many processes were pinned."""
    import psutil

    pinned = 0
    for infos in node.all_processes.values():
        for info in infos:
            try:
                proc = psutil.Process(info.process.pid)
                for p in [proc, *proc.children(recursive=True)]:
                    p.cpu_affinity(list(cores))
                    pinned += 1
            except psutil.NoSuchProcess:  # a process that exited after starting
                continue
    return pinned
