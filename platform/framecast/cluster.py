"""Join the Ray cluster named by RAY_ADDRESS, or start a local Ray in this process.

Ray is imported inside the functions: the rest of the library never needs it.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from framecast.config import VERBOSE_ENV


def verbose() -> bool:
    """Whether Ray's own output should reach this terminal (`--verbose`, FRAMECAST_VERBOSE=1)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def init_ray(num_cpus: int | None = None) -> dict:
    """Connect to Ray and return the cluster's resources.

    RAY_ADDRESS set (as `ray job submit` does for its jobs): join that cluster.
    Otherwise: start a fresh local Ray in-process, never attaching to someone else's by accident.
    Unless `verbose()`, Ray's own logs, progress blocks and worker output stay in Ray's log
    folder (named once here): jobs print their own progress.
    """
    import ray

    if not ray.is_initialized():
        quiet = {} if verbose() else {
            "log_to_driver": False, "logging_level": logging.ERROR,
            "logging_config": ray.LoggingConfig(log_level="WARNING")}
        # ray.init installs a C++ SIGTERM handler that exits at once: a job's own handler
        # (jobs.common.run_job: end MLflow runs as KILLED) is put back after it, and stays
        # (measured: Ray Data and Ray Train install none later).
        handler = signal.getsignal(signal.SIGTERM)
        if quiet:  # the token-auth notice ray.init logs through a terminal handler of its own
            logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        if os.environ.get("RAY_ADDRESS"):
            ray.init(**quiet)  # a submitted job's runtime_env is the submitter's to set
        else:
            # Deprecation notices of Ray's own internals, in every worker: log files only.
            env = {} if verbose() else {
                "runtime_env": {"env_vars": {"PYTHONWARNINGS": "ignore::DeprecationWarning"}}}
            ray.init(address="local", num_cpus=num_cpus, **quiet, **env)
        if callable(handler):
            signal.signal(signal.SIGTERM, handler)
        if quiet:
            # Ray Data sets its logger up again (level, terminal handler) when imported and when
            # a data set's context changes: the level from the environment wins each time. Set
            # after ray.init, so Ray's own processes keep theirs.
            os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
            import ray.data

            log_dir = ray_log_dir()
            route_driver_logs(Path(log_dir) / "framecast-driver.log")

            ray.data.DataContext.get_current().enable_progress_bars = False
            print(f"ray: logs in {log_dir} (--verbose or {VERBOSE_ENV}=1 shows them here)")
    return ray.cluster_resources()


_RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "mlflow")


def route_driver_logs(path: Path) -> None:
    """Ray's and MLflow's own warnings in this process go to `path`; only errors still reach
    the terminal."""
    try:
        handler: logging.Handler = logging.FileHandler(path)
    except OSError:  # the log folder is on another node: keep records out of the terminal only
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("ray", "mlflow"):
        logging.getLogger(name).addHandler(handler)
    quiet_console()


def quiet_console() -> None:
    """Raise the terminal handlers of Ray's and MLflow's loggers to ERROR (their records still
    reach the file handler). Serve attaches its own handlers when it starts: call again then."""
    if verbose():
        return
    for name in _RAY_LOGGERS:
        logger = logging.getLogger(name)
        for existing in logger.handlers:
            if isinstance(existing, logging.StreamHandler) and not isinstance(
                    existing, logging.FileHandler):
                existing.setLevel(logging.ERROR)
        # Warnings and up reach the file; Ray Data attaches terminal handlers of its own when a
        # data set executes, so its INFO records stop here (they are in the session's logs).
        logger.setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.ERROR)


def ray_log_dir() -> str:
    """This Ray session's log folder (on the head node)."""
    import ray

    try:
        return str(ray._private.worker._global_node.get_logs_dir_path())
    except AttributeError:  # joined a remote cluster: the folder is on its head node
        return "the head node's /tmp/ray/session_latest/logs"


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
