"""A tune study's results: one row per trial from Ray Tune's ResultGrid and the child runs,
then the table, plot and best config, written to the study's folder and its parent run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from framecast import tracking
from framecast.config import from_dict, to_dict
from framecast.tune_space import RESERVED_FLAGS
from jobs.tune_progress import label
from jobs.tune_study import JOB_CONFIGS, TRIAL_TAG, Study


def _child_runs(experiment: str, parent_run_id: str) -> dict[str, Any]:
    """The study's child runs by trial key."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[experiment], output_format="list",
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")
    return {r.data.tags[TRIAL_TAG]: r for r in runs if TRIAL_TAG in r.data.tags}


def collect_rows(study: Study, results: Any, parent_run_id: str) -> list[dict[str, Any]]:
    """One row per trial of `results` (a ray.tune.ResultGrid): its params, metrics, steps,
    status and child run. Child runs of trials that ASHA stopped (or a kill left running) end
    KILLED, tagged why."""
    import mlflow

    children = _child_runs(study.experiment, parent_run_id)
    client = mlflow.MlflowClient()
    params = {p.key: None for p in study.spec.params}
    named = (*study.spec.metrics, *study.spec.plot.values(), *study.spec.pareto)
    rows = []
    for result in results:
        # Tune fills the trial id into every trial's last result, one that never reported
        # included, and the config once the trial's actor started (else its params are None).
        metrics = dict(result.metrics or {})
        trial_id = str(metrics["trial_id"])
        key = f"{study.name}/{trial_id}"
        step = metrics.get("step")
        if result.error is not None:
            status = "failed"
        elif study.steps and isinstance(step, (int, float)) and step < study.steps:
            status = f"stopped at step {int(step)}"
        else:
            status = "finished"
        child = children.get(key)
        if child is not None and child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, tracking.TUNE_STOPPED_TAG, status)
            client.set_terminated(child.info.run_id, "KILLED")
        rows.append({"trial": trial_id, **params, **(result.config or {}).get("p", {}),
                     **{m: metrics.get(m) for m in named},
                     "step": step, "status": status,
                     "run": child.info.run_id if child is not None else None})
    known = {f"{study.name}/{row['trial']}" for row in rows}
    for key, child in children.items():  # a trial Ray Tune had not saved when a kill came
        if key not in known and child.info.status == "RUNNING":
            client.set_tag(child.info.run_id, tracking.TUNE_STOPPED_TAG, "study killed")
            client.set_terminated(child.info.run_id, "KILLED")
    return rows


def best_config(study: Study, row: dict[str, Any]) -> dict[str, Any]:
    """The best trial's full job config, without the study's own settings."""
    spec = study.spec
    flags = spec.trial_flags({p.key: row[p.key] for p in spec.params})
    values = to_dict(from_dict(JOB_CONFIGS[spec.job], flags))
    return {k: v for k, v in values.items() if k not in RESERVED_FLAGS}


def publish(study: Study, rows: list[dict[str, Any]], parent_run_id: str,
            seconds: float) -> dict[str, Any]:
    """Table (Markdown, CSV), plot and best config: written to the study's folder and logged
    to the parent run (study/...)."""
    import mlflow
    import yaml

    from framecast import tune_report

    spec = study.spec
    finished = [r for r in rows if r["status"] == "finished"]
    ranked = tune_report.rank(rows, spec.metric, spec.mode)
    best = next((r for r in tune_report.rank(finished or rows, spec.metric, spec.mode)
                 if isinstance(r.get(spec.metric), (int, float))), None)
    if spec.pareto:
        front = tune_report.pareto_front(ranked, spec.pareto)
        ranked = [{**r, "pareto": on} for r, on in zip(ranked, front, strict=True)]
    extra = [m for m in (*spec.plot.values(), *spec.pareto) if m not in spec.metrics]
    columns = ["trial", *(p.key for p in spec.params), *spec.metrics,
               *dict.fromkeys(extra), "step", "status", *(["pareto"] if spec.pareto else []),
               "run"]
    markdown, csv_text = tune_report.table(ranked, columns)
    folder = study.path
    folder.mkdir(parents=True, exist_ok=True)
    files = {"results.md": markdown.encode(), "results.csv": csv_text.encode()}
    if spec.plot:
        labels = [label({p.key: r[p.key] for p in spec.params}) for r in ranked]
        files["plot.png"] = tune_report.study_plot(
            ranked, spec.plot["x"], spec.plot["y"], color=spec.plot.get("color", ""),
            labels=labels, front=[bool(r.get("pareto")) for r in ranked],
            title=f"{study.name}: {len(rows)} trials")
    if best is not None:
        command = f"python -m jobs.{spec.job} --config {folder / 'best_config.yaml'}"
        header = (f"# Best trial {best['trial']} of study {study.name} ({spec.metric} = "
                  f"{best[spec.metric]:.6g}, {spec.mode}); rerun it with:\n#   {command}\n"
                  "# Flags given on that command line win over this file.\n")
        files["best_config.yaml"] = (header + yaml.safe_dump(
            best_config(study, best), sort_keys=False)).encode()
    for name, data in files.items():
        (folder / name).write_bytes(data)
        mlflow.log_artifact(str(folder / name), artifact_path="study")
    mlflow.log_metrics({"trials": float(len(rows)), "trials_finished": float(len(finished)),
                        "study_seconds": seconds})
    if best is not None:
        mlflow.log_metric(f"best_{spec.metric}", float(best[spec.metric]))
        mlflow.set_tags({tracking.BEST_TRIAL_TAG: best["trial"],
                         tracking.BEST_CONFIG_TAG: str(folder / "best_config.yaml")})
    return {"table": markdown, "best": best, "folder": folder,
            "best_config": folder / "best_config.yaml" if best is not None else None,
            "plot": folder / "plot.png" if spec.plot else None}


def show_finished(study: Study, parent_run_id: str) -> dict[str, Any]:
    """A finished study: print its table from the parent run; nothing runs."""
    import mlflow

    run = mlflow.MlflowClient().get_run(parent_run_id)
    local = mlflow.artifacts.download_artifacts(run_id=parent_run_id,
                                                artifact_path="study/results.md")
    table = Path(local).read_text()
    print(f"tune: study {study.name} finished (MLflow run {parent_run_id}); 0 trials run")
    print(table, end="")
    best = run.data.tags.get(tracking.BEST_CONFIG_TAG)
    if best:
        print(f"tune: best config {best}")
    return {"parent_run_id": parent_run_id, "ran": 0, "reused": 0, "table": table,
            "best_config": Path(best) if best else None, "rows": None}
