"""Join the Ray cluster named by RAY_ADDRESS, or start a local Ray in this process.

Ray is imported inside the functions: the rest of the library never needs it.
"""

from __future__ import annotations

import contextlib
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


def node_cpus() -> int:
    """The cores a process on this Ray node may use: the node's CPUs as Ray counts them, and no
    more than the process's CPU affinity allows. A worker sizes its thread pool by this, not by
    the whole cluster's CPUs, which on several nodes are mostly other machines' cores."""
    import os

    import ray

    here = ray.get_runtime_context().get_node_id()
    ray_cpus = next((n["Resources"].get("CPU", 1.0) for n in ray.nodes()
                     if n["NodeID"] == here and n["Alive"]), total_cpus())
    return max(1, min(int(ray_cpus), len(os.sched_getaffinity(0))))


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


def check_gpus(needed: int, what: str = "--use-gpu") -> None:
    """Ray waits, with no message, for resources the cluster lacks. For `needed` GPUs on a
    local Ray started in-process (nothing will ever add one): ConfigError. On a cluster joined
    through RAY_ADDRESS an autoscaler may add GPU nodes: say what the run waits for."""
    import ray

    from framecast.config import ConfigError

    have = ray.cluster_resources().get("GPU", 0.0)
    if have >= needed:
        return
    if not os.environ.get("RAY_ADDRESS"):
        raise ConfigError(f"{what} needs {needed} GPU(s) and this machine's Ray has {have:g}; "
                          "drop the flag or join a cluster with GPUs (RAY_ADDRESS)")
    print(f"{what}: the cluster has {have:g} GPU(s) now and the run needs {needed}; it waits "
          "until nodes with GPUs join (Ctrl-C stops)", flush=True)


def alive_nodes() -> list[dict]:
    """The cluster's alive nodes as `ray.nodes()` lists them (NodeID, NodeManagerAddress, ...)."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def local_path(path: str | Path) -> Path | None:
    """`path` as a local folder, or None for a URI another system serves (s3://, gs://, an
    MLflow http server, mlflow-artifacts:): those are shared by construction. file: URIs are
    local paths."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(str(path))
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme:
        return None
    return Path(path).resolve()


def _write_marker(folders: list[str], token: str, node: str) -> dict[str, str]:
    """On one node: a marker file in each folder; {folder: error} for those it cannot write."""
    failed = {}
    for folder in folders:
        try:
            Path(folder, f".framecast-shared-{token}-{node}").write_text(node)
        except OSError as err:
            failed[folder] = f"cannot write there ({type(err).__name__}: {err.strerror or err})"
    return failed


def _read_markers(folders: list[str], token: str, nodes: list[str]) -> dict[str, set[str]]:
    """On one node: {folder: the nodes whose marker it sees there}."""
    return {folder: {n for n in nodes if Path(folder, f".framecast-shared-{token}-{n}").is_file()}
            for folder in folders}


def _remove_marker(folders: list[str], token: str, node: str) -> None:
    for folder in folders:
        Path(folder, f".framecast-shared-{token}-{node}").unlink(missing_ok=True)


def check_shared_paths(paths: dict[str, str | Path | None], timeout_s: float = 120.0) -> int:
    """Refuse (ConfigError, one line naming the path and the node) when a folder in `paths`
    ({what: folder}, e.g. {"--storage": "/shared/ray_results"}) is not the same folder on every
    alive node of the Ray cluster. Returns the number of nodes checked.

    One node: nothing to check, nothing runs. More: a task pinned to each node (no CPU
    reserved) writes a marker into every folder, then a task per node looks for every node's
    markers, then each node removes its own. URIs (s3://, an MLflow server) are skipped; None
    and "" entries too. Folders must exist on the calling node (callers create them).
    """
    import uuid

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from framecast.config import ConfigError

    nodes = alive_nodes()
    if len(nodes) <= 1:
        return len(nodes)
    folders: dict[str, str] = {}  # folder -> what the user called it (the first name wins)
    for what, path in paths.items():
        local = local_path(path) if path else None
        if local is not None:
            folders.setdefault(str(local), what)
    if not folders:
        return len(nodes)
    ids = [n["NodeID"] for n in nodes]
    where = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in nodes}
    token, names = uuid.uuid4().hex[:12], list(folders)

    def on_each_node(fn, args) -> list:
        remote = ray.remote(num_cpus=0, max_retries=0)(fn)
        return ray.get([remote.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node_id=node, soft=False)).remote(names, token, *args(node)) for node in ids],
            timeout=timeout_s)

    def refuse(folder: str, node: str, why: str) -> ConfigError:
        return ConfigError(
            f"{folders[folder]} {folder} is not shared storage: node {node} ({where[node]}) "
            f"{why}; a job on {len(ids)} nodes needs it on a filesystem every node mounts at "
            "the same path (NFS), or a URI (s3://, gs://, an MLflow server)")

    try:
        written = on_each_node(_write_marker, lambda node: (node,))
        for node, failed in zip(ids, written, strict=True):
            for folder, why in failed.items():
                raise refuse(folder, node, why)
        seen = dict(zip(ids, on_each_node(_read_markers, lambda node: (ids,)), strict=True))
        # The job's own node is the reference: a node that does not see what it sees there
        # (or whose marker it does not see) does not share the folder with the job.
        here = ray.get_runtime_context().get_node_id()
        here = here if here in seen else ids[0]
        for folder in names:
            reference = seen[here][folder]
            for node in ids:
                if node not in reference:
                    raise refuse(folder, node, "sees another folder there than this job's "
                                 f"node {here} ({where[here]}): its marker is not there")
                lost = reference - seen[node][folder]
                if lost:
                    raise refuse(folder, node, "sees another folder there: the marker node "
                                 f"{sorted(lost)[0]} wrote is missing on it")
    finally:
        with contextlib.suppress(Exception):  # a cleanup failure must not hide the refusal
            on_each_node(_remove_marker, lambda node: (node,))
    return len(ids)
