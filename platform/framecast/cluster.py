"""Join the Ray cluster named by RAY_ADDRESS, or start a local Ray in this process.

Ray is imported inside the functions: the rest of the library never needs it.
"""

from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> dict:
    """Connect to Ray and return the cluster's resources.

    RAY_ADDRESS set (as `ray job submit` does for its jobs): join that cluster.
    Otherwise: start a fresh local Ray in-process, never attaching to someone else's by accident.
    """
    import ray

    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            ray.init()
        else:
            ray.init(address="local", num_cpus=num_cpus)
    return ray.cluster_resources()


def total_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))
