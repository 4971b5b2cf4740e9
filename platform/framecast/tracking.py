"""MLflow helpers: one default store, experiments with artifacts beside it, thin loggers.

With MLFLOW_TRACKING_URI set (e.g. an `mlflow server`), that server is used as is. Otherwise runs
go to a SQLite file in `mlruns/` under the project home (FRAMECAST_HOME, default: the current
folder) with artifacts beside it: MLflow's own default would put artifacts under the *current*
folder, which under `ray job submit` is a temporary copy that disappears.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from framecast.config import ConfigError, project_home

DEFAULT_EXPERIMENT = "framecast"

# The tags framecast writes on MLflow runs, in one place: jobs find and read each other's runs
# by them (a rerun resumes a training by its Ray run name, the pipeline reuses a finished stage).
JOB_TAG = "framecast.job"  # which job made the run
STAGE_KEY_TAG = "framecast.stage_key"  # a finished stage's key (`find_stage`)
OUT_TAG_PREFIX = "framecast.out."  # + output name: what a rerun needs of a stage's outputs
RAY_RUN_TAG = "framecast.ray_run"  # a training's Ray Train run name
MODEL_TAG = "framecast.model"  # the architecture a training trains
MODEL_REF_TAG = "framecast.model_ref"  # the logged model a job read
FP32_RUN_TAG = "framecast.fp32_run_id"  # a quantization's fp32 training run
DECODE_TAG = "framecast.decode"  # the decoding a training chose on val
NODE_TAG = "framecast.node.rank{}"  # .format(rank): the Ray node id a training rank ran on
DATASET_TAG = "framecast.dataset"  # a render's data folder
RENDER_NODES_TAG = "framecast.render_nodes"  # sequences rendered per Ray node (JSON)
COMPARE_TAG = "framecast.compare"  # a comparison entrant's child run
COMPARE_LR_TAG = "framecast.compare_lr"
ROLLOUT_DECODE_TAG = "framecast.rollout_decode"
TUNE_STUDY_TAG = "framecast.tune_study"  # on a study's parent run: its name
TUNE_TRIAL_TAG = "framecast.tune_trial"  # on a trial's run: "<study>/<Tune trial id>"
TUNE_RESULT_TAG = "framecast.tune_result"  # on a finished trial's run: its final report (JSON)
TUNE_STOPPED_TAG = "framecast.tune_stopped"
BEST_TRIAL_TAG = "framecast.best_trial"
BEST_CONFIG_TAG = "framecast.best_config"
_OPENED: list[str] = []  # runs this process started or resumed, oldest first


def store_dir() -> Path:
    return project_home() / "mlruns"


def local_tracking_uri() -> str:
    """framecast's own store: a SQLite file under the project home."""
    return f"sqlite:///{store_dir() / 'mlflow.db'}"


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def ensure_tracking_uri() -> None:
    """Point MLflow at framecast's store (`default_tracking_uri`) unless something in this process
    already chose one (MLFLOW_TRACKING_URI, `mlflow.set_tracking_uri`, `use_experiment`). A
    bare Python session loading a model would otherwise ask MLflow's own default, a new empty
    `mlflow.db` in the current folder, and find nothing the jobs logged."""
    import mlflow

    if not mlflow.is_tracking_uri_set():
        mlflow.set_tracking_uri(default_tracking_uri())


def use_experiment(name: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the default store and experiment `name` (created if new); its id."""
    import mlflow

    uri = default_tracking_uri()
    # framecast's own store (MLFLOW_TRACKING_URI may hold it: set_tracking_uri exports it, as in
    # `ensure_tracking_uri`) keeps its artifacts beside it; a store the user named keeps MLflow's.
    local_default = uri == local_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        location = None
        if local_default:
            artifacts = store_dir() / "artifacts" / name
            artifacts.mkdir(parents=True, exist_ok=True)
            location = artifacts.as_uri()
        try:
            experiment_id = mlflow.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            # Another process or thread created it between the lookup and here (two jobs
            # starting against one store): use theirs; anything else is raised as it was.
            experiment = mlflow.get_experiment_by_name(name)
            if experiment is None:
                raise
            experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def worker_folders(experiment: str = DEFAULT_EXPERIMENT) -> dict[str, str]:
    """The local folders of the MLflow store that Ray workers write into (a Train worker logs
    metrics, a Tune trial logs models): {what: folder}. A SQLite store's folder and a file
    artifact location; none for an MLflow server that proxies its artifacts."""
    import mlflow

    uri = default_tracking_uri()
    folders = {}
    if uri.startswith("sqlite:///"):
        folders["the MLflow store"] = str(Path(uri[len("sqlite:///"):]).parent)
    use_experiment(experiment)
    location = mlflow.get_experiment_by_name(experiment).artifact_location
    if location.startswith(("file:", "/")):
        folders["MLflow artifacts"] = location
    return folders


def ui_command() -> str:
    """The command a user runs to browse the default store (with this Python's mlflow), or the
    server's address when the store is an MLflow server."""
    import sys

    uri = default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return f"open {uri}"
    local = Path(sys.executable).parent / "mlflow"
    command = local if local.exists() else "mlflow"
    return f"{command} ui --backend-store-uri {uri}"


def log_image(image: np.ndarray, artifact_file: str) -> None:
    import mlflow

    mlflow.log_image(image, artifact_file=artifact_file)


def log_file_bytes(data: bytes, artifact_path: str, name: str) -> None:
    """Log raw bytes (a GIF, a JSON document) as an artifact file called `name`."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def artifact_path(run_id: str, artifact: str) -> str:
    """Where a run's artifact lives: a local path for a local store, else its URI."""
    from urllib.parse import unquote, urlparse

    import mlflow

    uri = f"{mlflow.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact}"
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def log_params(params: dict[str, Any]) -> None:
    import mlflow

    mlflow.log_params({k: str(v)[:6000] for k, v in params.items()})


def start_run(**kwargs: Any):
    """`mlflow.start_run`, nested under the active run when there is one (a pipeline stage);
    remembered so an interrupted job can end it with its true state (`end_open_runs`)."""
    import mlflow

    run = mlflow.start_run(nested=mlflow.active_run() is not None, **kwargs)
    remember_run(run.info.run_id)
    return run


@contextlib.contextmanager
def job_run(job: str, *, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
            run_id: str | None = None, params: dict[str, Any] | None = None,
            tags: dict[str, Any] | None = None) -> Iterator[Any]:
    """The MLflow run of one job (or pipeline stage): in `experiment` of the default store,
    nested under the active run, tagged `framecast.job=job` and `tags`, with `params` logged.
    `run_id` resumes that run (params already logged with the same values are kept)."""
    import mlflow

    use_experiment(experiment)
    with start_run(run_name=run_name, run_id=run_id) as run:
        mlflow.set_tags({JOB_TAG: job, **{k: str(v) for k, v in (tags or {}).items()}})
        if params:
            try:
                log_params(params)
            except mlflow.exceptions.MlflowException:
                if run_id is None:
                    raise  # a new run refusing its params is a real error
        yield run


def find_run(experiment: str, tag: str, value: str) -> str | None:
    """The newest run of `experiment` whose tag `tag` is `value`, or None."""
    import mlflow

    experiment_id = use_experiment(experiment)
    found = mlflow.search_runs([experiment_id], f"tags.`{tag}` = '{value}'",
                               output_format="list", order_by=["attributes.start_time DESC"],
                               max_results=1)
    return found[0].info.run_id if found else None


def remember_run(run_id: str) -> None:
    """Count `run_id` (e.g. created through the client) among this process's runs."""
    if run_id not in _OPENED:
        _OPENED.append(run_id)


def end_open_runs(status: str) -> list[str]:
    """End every run this process opened that is not FINISHED with `status` (KILLED after
    Ctrl-C/SIGTERM, FAILED after an error): MLflow's context managers end a run that an
    exception leaves as FAILED, and a killed process leaves it RUNNING. Returns the run ids."""
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run(status=status)
    if not _OPENED:
        return []  # a job that failed before logging: touching MLflow would create a store
    client, ended = mlflow.MlflowClient(default_tracking_uri()), []
    for run_id in _OPENED:
        try:
            if client.get_run(run_id).info.status != "FINISHED":
                client.set_terminated(run_id, status=status)
                ended.append(run_id)
        except mlflow.exceptions.MlflowException:
            continue  # a deleted run, an unreachable store: nothing to mend
    _OPENED.clear()
    return ended


def parent_tags() -> dict[str, str]:
    """Tags that make a run created through the client a child of the active run, if any."""
    import mlflow

    active = mlflow.active_run()
    return {"mlflow.parentRunId": active.info.run_id} if active else {}


def stage_key(stage: str, **inputs: Any) -> str:
    """A short fingerprint of a pipeline stage and everything that determines its output."""
    import hashlib
    import json

    text = json.dumps({"stage": stage, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def finished_stage(key: str, experiment: str) -> Any:
    """The newest FINISHED run tagged with stage key `key` in `experiment`, or None."""
    import mlflow

    runs = mlflow.search_runs(
        experiment_names=[experiment], output_format="list", max_results=1,
        filter_string=f"tags.`{STAGE_KEY_TAG}` = '{key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def mark_stage(run_id: str, key: str, **tags: str) -> None:
    """Tag a finished stage's run so a rerun of the pipeline can find and reuse it."""
    import mlflow

    client = mlflow.MlflowClient()
    for name, value in {STAGE_KEY_TAG: key, **tags}.items():
        client.set_tag(run_id, name, str(value))


_ALIAS = re.compile(r"[\w\-]{1,255}")  # MLflow's rule for an alias


def check_registered_name(name: str, flag: str = "--register") -> None:
    """Refuse (ConfigError, one line) a registered model name MLflow would refuse only once the
    model is logged ('/' or ':'), or one the jobs cannot read back as NAME[@ALIAS] ('@') or in
    a registry search (a quote): before any work, not after it."""
    if not name.strip() or name != name.strip() or any(c in name for c in "/:@'\"\\"):
        raise ConfigError(f"{flag} {name!r}: a registered model name has no '/', ':', '@', "
                          "quotes or surrounding spaces (e.g. vblt-2d-int8)")


def check_alias(alias: str, flag: str = "--alias") -> None:
    """Refuse (ConfigError, one line) an alias MLflow refuses or keeps for itself: 'latest'
    (the newest version) and v<N> (version N)."""
    if not _ALIAS.fullmatch(alias) or alias.lower() == "latest" or re.fullmatch(r"[vV]\d+",
                                                                                   alias):
        raise ConfigError(f"{flag} {alias!r}: an alias is letters, digits, '_' and '-', and not "
                          "'latest' or v<N>, which name the newest version and version N")


def check_register_precision(name: str, precision: str, flag: str = "--register") -> None:
    """Refuse (ConfigError, one line) registering a `precision` model ('fp32' or 'w8a8') under
    a name whose versions are of the other: serve, tune and evaluate read a name's versions as
    one model (an int8 version under the fp32 model's name broke later quantize runs)."""
    import mlflow

    ensure_tracking_uri()
    versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    other = [v for v in versions if (v.tags.get("precision") == "w8a8") != (precision == "w8a8")]
    if other:
        kind = "W8A8 (quantized)" if precision != "w8a8" else "float"
        raise ConfigError(f"{flag} {name}: its versions are {kind} models (version "
                          f"{other[0].version}); register this {precision} model under "
                          "another name")
