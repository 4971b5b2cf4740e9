"""Small real data sets for tests, written in-process: the render job's batch UDF (real
PyVista rendering), hive shards and manifest, published the same way, minus Ray Data's actors
(whose start-up costs more than rendering a tiny set). The render job itself is tested in
test_render_job.py."""

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from framecast import data as fdata
from framecast.config import to_dict
from framecast.render.spec import RenderConfig


def write_dataset(out: Path, config: RenderConfig) -> fdata.Manifest:
    """What the render job does, minus Ray: render in two batches, write hive shards, publish."""
    staging = fdata.staging_dir(out)
    udf = fdata.ShardRenderer(to_dict(config))
    ids = np.arange(config.num_sequences)
    for part, chunk in enumerate(np.array_split(ids, 2)):
        table = udf({"id": chunk})
        for split in ("train", "val", "test"):
            rows = table.filter(pc.equal(table["split"], split)).drop_columns(["split"])
            if rows.num_rows:
                folder = staging / fdata.SHARDS / f"split={split}"
                folder.mkdir(parents=True, exist_ok=True)
                pq.write_table(rows, folder / f"part-{part}.parquet")
    manifest = fdata.build_manifest(staging, config, render_seconds=1.0)
    fdata.publish(staging, out, manifest)
    return manifest


def tiny_2d(out: Path, **fields: object) -> Path:
    """A 2D triangle data set of `fields` (RenderConfig's) at `out`."""
    write_dataset(out, RenderConfig(**{"kind": "2d", **fields}))
    return out
