"""Render a synthetic video data set with Ray Data and PyVista, and log it to MLflow.

    python -m jobs.render --kind 2d --num-sequences 1000 --workers 2 --out data/tri
    ray job submit --working-dir . -- python -m jobs.render --kind 3d --out /shared/data/cubes
    python -m jobs.render --kind 3d --preset hard --out data/cubes-hard   # see --preset

Each Ray Data actor keeps one PyVista plotter warm; sequence i depends only on (seed, i), so the
bytes do not depend on the number of workers. Shards are written to a staging folder beside
--out and renamed into place only when complete, with a manifest of counts and checksums.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from framecast import data as fdata
from framecast.config import ConfigError, check_bounds, flat_params, project_home, to_dict
from framecast.render.spec import DATA_PRESETS, RenderConfig, preset_flags
from jobs.common import run_job

# CPUs each Ray Data write task reserves: it only turns rendered rows into Parquet.
WRITE_CPUS = 0.1


@dataclass(frozen=True)
class RenderJobConfig(RenderConfig):
    out: str = field(default="", metadata={
        "help": "output folder (default: $FRAMECAST_HOME/data/<kind>, home = current folder)"})
    workers: int = field(default=2, metadata={"help": "Ray Data actors, each with a warm plotter"})
    cpus_per_worker: float = field(
        default=0.0, metadata={"help": "CPUs reserved per actor; 0 = auto, leaving room for Ray "
                                       "Data's write tasks (a full reservation hangs)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per map_batches call"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace a different framecast data set already in --out (other files are "
                "never deleted)"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})
    mlflow: bool = field(default=True, metadata={"help": "log the run to MLflow"})
    preview: int = field(default=4, metadata={"help": "sequences in the logged contact sheet/GIF"})
    preset: str = field(default="", metadata={"help": (
        "a data preset, whose settings apply under the flags given beside it or in --config: "
        + "; ".join(f"{name} = {' '.join(preset_flags(name))}" for name in sorted(DATA_PRESETS))
        + " (the V-BLT comparison's data)")})

    @classmethod
    def expand_values(cls, values: dict) -> dict:
        """The preset's settings under the given values (`config.from_dict`'s hook: the
        command line and --config), so that flags given beside it win."""
        if not values.get("preset"):
            return values
        preset_flags(values["preset"])  # an unknown name: one line naming the presets
        return {**DATA_PRESETS[values["preset"]], **values}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset:
            preset_flags(self.preset)
        check_bounds(self, positive=("workers", "batch_size"))
        if self.cpus_per_worker < 0:
            raise ConfigError(f"cpus_per_worker={self.cpus_per_worker} must be >= 0 (0 = auto)")

    @property
    def data_config(self) -> RenderConfig:
        return RenderConfig(**{f.name: getattr(self, f.name) for f in fields(RenderConfig)})

    @property
    def out_path(self) -> Path:
        return Path(self.out).resolve() if self.out else project_home() / "data" / self.kind


@dataclass
class RenderResult:
    out: Path
    status: str  # created | replaced | reused
    manifest: fdata.Manifest
    seconds: float
    run_id: str | None = None
    nodes: dict[str, int] = field(default_factory=dict)  # sequences rendered per Ray node id

    @property
    def seq_per_s(self) -> float:
        return self.manifest.config.num_sequences / max(self.seconds, 1e-9)


class NodeTally:
    """A Ray actor counting the sequences each node rendered (the job's report of where)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def add(self, node: str, sequences: int) -> None:
        self.counts[node] = self.counts.get(node, 0) + sequences

    def get(self) -> dict[str, int]:
        return self.counts


class TalliedRenderer(fdata.ShardRenderer):
    """fdata.ShardRenderer that tells a NodeTally how many sequences its node rendered."""

    def __init__(self, config: dict, tally: object) -> None:
        import ray

        super().__init__(config)
        self.tally, self.node = tally, ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> object:
        table = super().__call__(batch)
        self.tally.add.remote(self.node, table.num_rows)
        return table


def render_to_staging(config: RenderJobConfig, staging: Path) -> tuple[float, dict[str, int]]:
    """Run the Ray Data pipeline; shards land in `staging`. Returns the seconds spent and the
    sequences rendered per Ray node id."""
    import ray
    import ray.data

    from framecast.cluster import check_shared_paths, init_ray, worker_cpus

    init_ray()
    # Ray Data's write tasks put shards into the staging folder beside --out from every node.
    nodes = check_shared_paths({"--out's folder": staging.parent})
    if nodes > 1:
        print(f"render: {staging.parent} is shared by all {nodes} nodes")
    n = config.num_sequences
    # Enough blocks to keep every actor busy and show progress, few enough to keep files large.
    blocks = min(n, max(4 * config.workers, math.ceil(n / 64)))
    tally = ray.remote(num_cpus=0)(NodeTally).remote()
    start = time.perf_counter()
    # The indices come from the driver (no read tasks) and the write tasks reserve a tenth of
    # a CPU: with 1-CPU tasks, actors spread one per node of a cluster of 1-CPU nodes left no
    # node a whole CPU, and the render waited forever.
    ds = ray.data.from_items([{"id": i} for i in range(n)],
                             override_num_blocks=blocks).map_batches(
        TalliedRenderer,
        fn_constructor_kwargs={"config": to_dict(config.data_config), "tally": tally},
        compute=ray.data.ActorPoolStrategy(size=config.workers),
        num_cpus=worker_cpus(config.workers, config.cpus_per_worker),
        batch_size=config.batch_size,
        batch_format="numpy",
    )
    ds.write_parquet(str(staging / fdata.SHARDS), partition_cols=["split"],
                     ray_remote_args={"num_cpus": WRITE_CPUS})
    seconds = time.perf_counter() - start
    nodes = ray.get(tally.get.remote())
    ray.kill(tally)
    return seconds, nodes


def _remove_stale_staging(out: Path) -> None:
    """Remove interrupted renders' staging folders; the caller holds the render lock, so no
    running render owns one."""
    for stale in fdata.stale_staging_dirs(out):
        print(f"render: removing partial output of an interrupted render: {stale}")
        shutil.rmtree(stale, ignore_errors=True)


def render(config: RenderJobConfig) -> RenderResult:
    """Render (or reuse) the data set described by `config`; see the module docstring."""
    out = config.out_path
    data_config = config.data_config
    with fdata.render_lock(out):
        _remove_stale_staging(out)
        status = fdata.output_status(out, data_config, config.overwrite)
        if status == "reuse":
            manifest = fdata.read_manifest(out)
            print(f"render: {out} already holds this data set "
                  f"({manifest.config.num_sequences} sequences); reusing it")
            return RenderResult(out, "reused", manifest, manifest.render_seconds)
        for split, count in data_config.split_sizes().items():
            if count == 0 and split != "train":
                print(f"render: warning: the {split} split is empty with "
                      f"{data_config.num_sequences} sequences; raise --num-sequences or the "
                      "split fractions")
        staging = fdata.staging_dir(out)
        try:
            seconds, nodes = render_to_staging(config, staging)
            manifest = fdata.build_manifest(staging, data_config, seconds)
            fdata.publish(staging, out, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        # Again at the end: a killed render's Ray workers are not in its process group and
        # write on for a second or two after the kill, re-creating the folder removed above
        # (measured: 3 runs of 4 of the fault test left one behind).
        _remove_stale_staging(out)
    result = RenderResult(out, "replaced" if status == "replace" else "created", manifest, seconds,
                          nodes=nodes)
    print(f"render: wrote {manifest.counts} sequences of {data_config.frame_shape} to {out} "
          f"in {seconds:.1f} s ({result.seq_per_s:.3g} sequences/s)")
    print(f"render: sequences per Ray node: {json.dumps(nodes, sort_keys=True)}")
    if config.mlflow:
        result.run_id = log_render(config, result)
    return result


def log_render(config: RenderJobConfig, result: RenderResult) -> str:
    """Log config, throughput, manifest, a contact sheet and a GIF; returns the run id."""
    import mlflow

    from framecast import tracking, viz

    videos, _ = fdata.load_preview(result.out, config.preview)
    with tracking.job_run("render", experiment=config.experiment, run_name=f"render-{config.kind}",
                          params=flat_params(config),
                          tags={tracking.DATASET_TAG: str(result.out)}) as run:
        mlflow.log_metrics({
            "sequences_per_s": result.seq_per_s,
            "render_seconds": result.seconds,
            **{f"sequences_{k}": v for k, v in result.manifest.counts.items()},
        })
        if result.nodes:
            mlflow.set_tag(tracking.RENDER_NODES_TAG, json.dumps(result.nodes, sort_keys=True))
        tracking.log_file_bytes(result.manifest.to_json().encode(), "dataset", fdata.MANIFEST)
        if len(videos):
            tracking.log_image(viz.contact_sheet(videos), "samples/contact_sheet.png")
            tracking.log_file_bytes(viz.gif_bytes(videos), "samples", "samples.gif")
    print(f"render: logged MLflow run {run.info.run_id} (browse: {tracking.ui_command()})")
    return run.info.run_id


def main(argv: list[str] | None = None) -> int:
    return run_job("render", RenderJobConfig, render, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
