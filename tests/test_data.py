"""The data set format without Ray: shards written by hand from the same batch UDF."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rendered import write_dataset

from framecast import data as fdata
from framecast.config import to_dict
from framecast.render.spec import RenderConfig

CFG = RenderConfig(kind="2d", num_sequences=10, frames=4, size=32, val_fraction=0.2,
                   test_fraction=0.2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "tri"
    write_dataset(out, CFG)
    return out


def test_splits_are_contiguous_index_ranges():
    assert CFG.split_sizes() == {"train": 6, "val": 2, "test": 2}
    assert CFG.split_of(np.arange(10)).tolist() == ["train"] * 6 + ["val"] * 2 + ["test"] * 2


def test_manifest_round_trips_through_json(dataset):
    manifest = fdata.read_manifest(dataset)
    assert fdata.Manifest.from_json(manifest.to_json()) == manifest
    assert manifest.config == CFG
    assert manifest.counts == {"train": 6, "val": 2, "test": 2}
    assert {"python", "numpy", "pyvista", "vtk"} <= set(manifest.versions)


def test_load_numpy_returns_sequences_in_index_order_with_metadata(dataset):
    videos, metas = fdata.load_numpy(dataset, "all", verify=True)
    assert videos.shape == (10, 4, 32, 32, 1) and videos.dtype == np.uint8
    assert [m["index"] for m in metas] == list(range(10))
    assert {"base", "height", "apex_offset", "initial_angle_deg", "angular_velocity_deg"} <= set(
        metas[0])
    val, val_meta = fdata.load_numpy(dataset, "val")
    assert np.array_equal(val, videos[6:8]) and {m["split"] for m in val_meta} == {"val"}
    preview, _ = fdata.load_preview(dataset, 3)
    assert np.array_equal(preview, videos[:3])


def test_data_is_exactly_what_the_renderer_makes(dataset):
    from framecast.render.scene import SequenceRenderer

    videos, _ = fdata.load_numpy(dataset, "all")
    renderer = SequenceRenderer(CFG)
    try:
        assert np.array_equal(renderer.render(9)[0], videos[9])
    finally:
        renderer.close()


def test_unknown_split_is_refused(dataset):
    with pytest.raises(ValueError, match="split='dev' is unknown"):
        fdata.load_numpy(dataset, "dev")


def test_a_folder_without_manifest_is_not_a_dataset(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(fdata.DatasetError, match="not a complete framecast data set"):
        fdata.load_numpy(tmp_path, "train")
    (tmp_path / fdata.MANIFEST).write_text("{}")
    with pytest.raises(fdata.DatasetError, match="manifest.json is a file; give the data set's"):
        fdata.read_manifest(tmp_path / fdata.MANIFEST)  # the manifest for its folder


def test_missing_or_corrupted_shards_are_detected(tmp_path):
    out = tmp_path / "d"
    manifest = write_dataset(out, CFG)
    shard = out / manifest.shards["val"][0]
    table = pq.read_table(shard)
    frames = table["frames"].to_pylist()
    frames[0] = bytes([255]) + frames[0][1:]
    pq.write_table(table.set_column(table.schema.get_field_index("frames"), "frames",
                                    [frames]), shard)
    with pytest.raises(fdata.DatasetError, match="fails its checksum"):
        fdata.load_numpy(out, "val", verify=True)
    shard.unlink()
    with pytest.raises(fdata.DatasetError, match="missing"):
        fdata.load_numpy(out, "val")


def test_a_staging_folder_with_missing_sequences_is_refused(tmp_path):
    staging = tmp_path / ".x.partial-1"
    (staging / fdata.SHARDS / "split=train").mkdir(parents=True)
    udf = fdata.ShardRenderer(to_dict(CFG))
    pq.write_table(udf({"id": np.arange(3)}).drop_columns(["split"]),
                   staging / fdata.SHARDS / "split=train" / "a.parquet")
    with pytest.raises(fdata.DatasetError, match="render is incomplete"):
        fdata.build_manifest(staging, CFG, 1.0)


def test_output_status_protects_what_is_already_there(tmp_path, dataset):
    assert fdata.output_status(tmp_path / "new", CFG, overwrite=False) == "create"
    assert fdata.output_status(dataset, CFG, overwrite=False) == "reuse"
    other = RenderConfig(kind="2d", num_sequences=11, frames=4, size=32)
    with pytest.raises(fdata.DatasetError, match="holds a different data set"):
        fdata.output_status(dataset, other, overwrite=False)
    assert fdata.output_status(dataset, other, overwrite=True) == "replace"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("precious")
    for overwrite in (False, True):  # --overwrite replaces data sets only, never other files
        with pytest.raises(fdata.DatasetError, match="not a framecast data set"):
            fdata.output_status(tmp_path / "notes", CFG, overwrite=overwrite)
    assert (tmp_path / "notes" / "thesis.tex").read_text() == "precious"


def test_a_second_render_into_the_same_folder_is_refused_while_one_runs(tmp_path):
    with fdata.render_lock(tmp_path / "d"):
        with pytest.raises(fdata.DatasetError, match="another render into"):
            with fdata.render_lock(tmp_path / "d"):
                pass
    with fdata.render_lock(tmp_path / "d"):  # free again once the first is done
        pass
    assert list(tmp_path.iterdir()) == []  # and no lock file is left beside --out


def test_the_render_lock_is_the_file_on_disk_not_one_a_finished_render_removed(tmp_path):
    import fcntl

    with fdata.render_lock(tmp_path / "d"):
        late = open(tmp_path / ".d.lock")  # opened before the first render removed it
    fcntl.flock(late, fcntl.LOCK_EX | fcntl.LOCK_NB)  # an orphan: locking it excludes no one
    with fdata.render_lock(tmp_path / "d"):
        with pytest.raises(fdata.DatasetError, match="another render into"):
            with fdata.render_lock(tmp_path / "d"):
                pass
    late.close()


def test_a_missing_folder_is_named_as_missing(tmp_path):
    with pytest.raises(fdata.DatasetError, match="does not exist"):
        fdata.read_manifest(tmp_path / "nope")


def test_publish_replaces_an_old_dataset_whole(tmp_path):
    out = tmp_path / "d"
    write_dataset(out, CFG)
    bigger = RenderConfig(kind="2d", num_sequences=12, frames=4, size=32)
    write_dataset(out, bigger)
    assert fdata.read_manifest(out).config == bigger
    assert len(fdata.load_numpy(out, "all")[0]) == 12
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # no staging or old copy left behind


def test_an_out_folder_that_cannot_be_written_is_named_not_the_lock_file():
    """`jobs.render --out /proc/nope` said "No such file or directory: '/proc/.nope.lock'",
    a file the user never named."""
    from framecast.data import DatasetError, render_lock

    with pytest.raises(DatasetError, match=r"^--out /proc/nope: cannot write in /proc \("):
        with render_lock(Path("/proc/nope")):
            pass
