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


def worker_cpus(workers: int, requested: float = 0.0, floor: float = 0.05) -> float:
    """CPUs to reserve per Ray worker/actor so one whole CPU stays free for Ray Data's read and
    write tasks (1 CPU each): a full reservation hangs on a small machine.

    requested > 0 is checked and returned; 0 means auto: (CPUs - 1) / workers, within
    [floor, 1]. Raises ConfigError when a requested reservation would leave no CPU.
    """
    from framecast.config import ConfigError

    total = total_cpus()
    spare = max(total - 1.0, 0.0)
    if requested > 0:
        if requested * workers > spare + 1e-9:
            raise ConfigError(
                f"cpus_per_worker={requested} x workers={workers} leaves no CPU for Ray Data's "
                f"read/write tasks on {total:g} CPUs (the job would hang); use at most "
                f"{spare / workers:.3g} or 0 (auto)")
        return requested
    return round(min(1.0, max(floor, spare / workers)), 3)
