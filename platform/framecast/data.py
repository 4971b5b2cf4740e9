"""The on-disk data set: Parquet shards per split plus a manifest that is written last.

Layout of a data set folder:

    DIR/manifest.json                     config, counts, checksums, shard list, versions
    DIR/shards/split=train/*.parquet      columns: index, frames (raw uint8 bytes), sha256, meta

A folder without `manifest.json`, or whose shards do not match it, is not a data set: renders
write into a staging folder beside DIR and only a finished, checked one is renamed into place.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import platform as _stdlib_platform
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from framecast.config import ConfigError, from_dict, to_dict
from framecast.render.spec import SPLITS, RenderConfig

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SHARDS = "shards"
_STAGING_TAG = ".partial-"


class DatasetError(ValueError):
    """The folder is not a complete, consistent framecast data set."""


@dataclass
class Manifest:
    config: RenderConfig
    counts: dict[str, int]
    checksums: dict[str, str]  # split -> sha256 over the per-sequence digests in index order
    shards: dict[str, list[str]]  # split -> shard paths relative to the data set folder
    versions: dict[str, str]
    created: str
    render_seconds: float
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        body = {**self.__dict__, "config": to_dict(self.config)}
        return json.dumps(body, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        body = json.loads(text)
        if body.get("format_version") != FORMAT_VERSION:
            raise DatasetError(f"manifest format_version={body.get('format_version')!r}; "
                               f"this framecast reads version {FORMAT_VERSION}")
        body["config"] = from_dict(RenderConfig, body["config"])
        return cls(**body)


def sequence_digest(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def split_checksum(digests: list[str]) -> str:
    """One checksum for a split from its per-sequence digests (in index order)."""
    h = hashlib.sha256()
    for d in digests:
        h.update(bytes.fromhex(d))
    return h.hexdigest()


class ShardRenderer:
    """Batch UDF for Ray Data's `map_batches`: sequence ids in, one Parquet-ready table out.

    A class so each actor keeps one warm plotter for all its batches.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        from framecast.render.scene import SequenceRenderer

        self.config = from_dict(RenderConfig, config)
        self.renderer = SequenceRenderer(self.config)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        indices = np.asarray(batch["id"], dtype=np.int64)
        splits = self.config.split_of(indices)
        frames, digests, metas = [], [], []
        for index, split in zip(indices.tolist(), splits.tolist(), strict=True):
            video, params = self.renderer.render(index)
            frames.append(video.tobytes())
            digests.append(sequence_digest(video))
            metas.append(json.dumps({**params, "split": split}))
        return pa.table({
            "index": pa.array(indices, pa.int64()),
            "split": pa.array(splits.tolist(), pa.string()),
            "frames": pa.array(frames, pa.binary()),
            "sha256": pa.array(digests, pa.string()),
            "meta": pa.array(metas, pa.string()),
        })


class StreamRenderer(ShardRenderer):
    """Batch UDF for a training stream: sequence indices in, the columns training reads out
    ({index, frames (B, T, H, W, C) uint8}), rendered with a warm plotter and never written to
    disk. The indices are the batch's `data` column, or, with `claim`, `claim(batch rows)`:
    indices handed out when the batch is rendered (a stream that starts again then goes on
    from where it was, see jobs.stream_cursor)."""

    def __init__(self, config: dict[str, Any],
                 claim: Callable[[int], np.ndarray] | None = None) -> None:
        super().__init__(config)
        self.claim = claim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = np.asarray(batch["data"], dtype=np.int64)
        indices = self.claim(len(rows)) if self.claim else rows
        videos = [self.renderer.render(int(i))[0] for i in indices.tolist()]
        return {"index": indices, "frames": np.stack(videos)}


def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": _stdlib_platform.python_version()}
    for name in ("framecast", "numpy", "pyarrow", "pyvista", "vtk", "ray"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _shard_files(root: Path, split: str) -> list[Path]:
    return sorted((root / SHARDS / f"split={split}").glob("*.parquet"))


def build_manifest(staging: Path, config: RenderConfig, render_seconds: float) -> Manifest:
    """Check the shards Ray Data wrote into `staging` and describe them.

    Every index 0..N-1 must appear exactly once, in the split the config assigns it to.
    """
    counts, checksums, shards = {}, {}, {}
    expected = config.split_of(np.arange(config.num_sequences))
    for split in SPLITS:
        files = _shard_files(staging, split)
        index_col, digest_col = [], []
        for f in files:
            table = pq.read_table(f, columns=["index", "sha256"])
            index_col.extend(table.column("index").to_pylist())
            digest_col.extend(table.column("sha256").to_pylist())
        order = np.argsort(index_col)
        indices = np.asarray(index_col, dtype=np.int64)[order]
        want = np.flatnonzero(expected == split)
        if not np.array_equal(indices, want):
            raise DatasetError(f"split {split!r} in {staging} holds {len(indices)} sequences, "
                               f"expected indices {want[:1].tolist()}..; the render is incomplete")
        counts[split] = len(indices)
        checksums[split] = split_checksum([digest_col[i] for i in order])
        shards[split] = [str(f.relative_to(staging)) for f in files]
    return Manifest(
        config=config, counts=counts, checksums=checksums, shards=shards,
        versions=software_versions(),
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        render_seconds=round(render_seconds, 3),
    )


def read_manifest(root: str | Path) -> Manifest:
    path = Path(root) / MANIFEST
    if not Path(root).exists():
        raise DatasetError(f"{root} does not exist")
    if Path(root).is_file():
        raise DatasetError(f"{root} is a file; give the data set's folder (the one holding "
                           f"{MANIFEST})")
    if not path.is_file():
        raise DatasetError(f"{root} is not a complete framecast data set (no {MANIFEST}); "
                           "render one with `python -m jobs.render --out DIR`")
    try:
        return Manifest.from_json(path.read_text())
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as err:
        raise DatasetError(f"{path} is unreadable: {err}") from err


def _split_names(split: str) -> tuple[str, ...]:
    if split == "all":
        return SPLITS
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; accepted: {', '.join(SPLITS)}, all")
    return (split,)


def shard_paths(root: str | Path, split: str) -> list[Path]:
    """Absolute shard paths of a split (or 'all'), as the manifest lists them."""
    root = Path(root)
    manifest = read_manifest(root)
    return [root / p for s in _split_names(split) for p in manifest.shards[s]]


def load_numpy(root: str | Path, split: str = "train", *, verify: bool = False
               ) -> tuple[np.ndarray, list[dict]]:
    """A split (train, val, test or all) as (uint8 [N, T, H, W, C], per-sequence metadata dicts),
    ordered by sequence index. `verify` recomputes every checksum against the manifest."""
    root = Path(root)
    manifest = read_manifest(root)
    shape = manifest.config.frame_shape
    videos, metas = [], []
    for name in _split_names(split):
        paths = [root / p for p in manifest.shards[name]]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise DatasetError(f"{root}: shard(s) in the manifest are missing: {missing[:3]}")
        table = _read_tables(paths, ["index", "frames", "sha256", "meta"])
        if table.num_rows != manifest.counts[name]:
            raise DatasetError(f"{root}: split {name!r} has {table.num_rows} sequences, "
                               f"manifest says {manifest.counts[name]}")
        table = table.sort_by("index")
        split_videos = _decode(table, shape)
        if verify:
            digests = [sequence_digest(v) for v in split_videos]
            if digests != table.column("sha256").to_pylist() or \
                    split_checksum(digests) != manifest.checksums[name]:
                raise DatasetError(f"{root}: split {name!r} fails its checksum")
        videos.append(split_videos)
        metas.extend(json.loads(m) for m in table.column("meta").to_pylist())
    return np.concatenate(videos), metas


def load_preview(root: str | Path, count: int) -> tuple[np.ndarray, list[dict]]:
    """The first `count` sequences of the train split (fewer if it is smaller), reading only as
    many shards as needed: a cheap look at a large data set."""
    root = Path(root)
    manifest = read_manifest(root)
    tables, rows = [], 0
    for rel in manifest.shards["train"]:
        if rows >= count:
            break
        tables.append(pq.read_table(root / rel, columns=["index", "frames", "meta"]))
        rows += tables[-1].num_rows
    table = pa.concat_tables(tables).sort_by("index").slice(0, count) if tables else None
    if table is None:
        return np.empty((0, *manifest.config.frame_shape), np.uint8), []
    metas = [json.loads(m) for m in table.column("meta").to_pylist()]
    return _decode(table, manifest.config.frame_shape), metas


def _read_tables(paths: list[Path], columns: list[str]) -> pa.Table:
    if not paths:
        return pa.table({c: pa.array([], pa.binary() if c == "frames" else pa.string())
                         for c in columns})
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])


def _decode(table: pa.Table, shape: tuple[int, ...]) -> np.ndarray:
    """The `frames` column (raw bytes per sequence) as uint8 (N, T, H, W, C)."""
    raw = table.column("frames").to_pylist()
    if not raw:
        return np.empty((0, *shape), np.uint8)
    return np.stack([np.frombuffer(b, np.uint8).reshape(shape) for b in raw])


def load_ray_dataset(root: str | Path, split: str = "train",
                     columns: tuple[str, ...] = ("index", "frames", "meta")):
    """A split as a `ray.data.Dataset` with columns index, frames (uint8 tensor T x H x W x C)
    and meta (JSON text): what Ray Train workers shard with `get_dataset_shard`. Training asks
    for ("index", "frames") only: torch batches cannot hold text."""
    import ray.data

    manifest = read_manifest(root)
    paths = [str(p) for p in shard_paths(root, split)]
    if not paths:
        raise DatasetError(f"split {split!r} of {root} is empty ({manifest.counts})")
    return ray.data.read_parquet(
        paths, columns=list(columns),
        tensor_column_schema={"frames": (np.uint8, manifest.config.frame_shape)},
    )


# --- staging and publishing -----------------------------------------------------------------

def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}{_STAGING_TAG}{uuid.uuid4().hex[:8]}"


def stale_staging_dirs(out: Path) -> list[Path]:
    """Staging folders left by interrupted renders into `out`."""
    return sorted(out.parent.glob(f".{out.name}{_STAGING_TAG}*"))


def output_status(out: Path, config: RenderConfig, overwrite: bool) -> str:
    """What to do with `out`: 'create', 'replace' or 'reuse'. Raises DatasetError when `out`
    holds anything but a framecast data set (never deleted, not even with `overwrite`), or a
    different data set and `overwrite` is off: nothing of the user's is lost."""
    if not out.exists():
        return "create"
    if not out.is_dir():
        raise DatasetError(f"--out {out} is a file, not a folder")
    if not any(out.iterdir()):
        return "create"
    try:
        manifest = read_manifest(out)
    except DatasetError:
        raise DatasetError(f"--out {out} holds files that are not a framecast data set; "
                           "choose an empty or new folder (--overwrite only replaces a data "
                           "set)") from None
    if overwrite:
        return "replace"
    if manifest.config != config:
        changed = sorted(k for k, v in to_dict(config).items()
                         if to_dict(manifest.config)[k] != v)
        raise DatasetError(f"--out {out} holds a different data set (differs in {changed}); "
                           "choose another folder or pass --overwrite to replace it")
    return "reuse"


@contextlib.contextmanager
def render_lock(out: Path) -> Iterator[None]:
    """Exclusive lock for rendering into `out`, so a second render cannot take a running one's
    staging folder for an interrupted one's leftovers. The lock file beside `out` is removed
    when the render ends (still locked, so a render that opened it meanwhile sees it gone and
    takes a new one): nothing is left beside --out."""
    path = out.parent / f".{out.name}.lock"
    while True:
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a")
        except OSError as err:  # the lock file is ours, not the user's: name --out
            raise DatasetError(f"--out {out}: cannot write in {out.parent} "
                               f"({err.strerror or err})") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DatasetError(f"another render into --out {out} is running; wait for it or "
                               "choose another folder") from None
        try:
            current = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        handle.close()  # locked a file the last render had removed: take the new one
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def publish(staging: Path, out: Path, manifest: Manifest) -> None:
    """Write the manifest, then swap the staging folder into place (old data kept until then)."""
    (staging / MANIFEST).write_text(manifest.to_json())
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
