"""The pipeline end to end on the smoke preset, twice: the second run reuses every stage."""

import mlflow

from jobs.pipeline import PipelineConfig, pipeline


def test_pipeline_runs_every_stage_then_reuses_them(ray_local, tmp_path, capsys):
    config = PipelineConfig(preset="smoke", data_dir=str(tmp_path), workers=1,
                            experiment="test-pipeline")
    first = pipeline(config)
    for kind in ("2d", "3d"):
        for stage in ("render", "train", "evaluate", "quantize"):
            assert not first[f"{stage}-{kind}"].startswith("reused"), (stage, kind)
        assert "answered in" in first[f"serve-{kind}"]  # one real HTTP request per model
    versions = mlflow.MlflowClient().get_model_version_by_alias("vblt-2d-int8", "candidate")
    assert versions.tags["precision"] == "w8a8"

    second = pipeline(config)
    assert all(what.startswith("reused") for stage, what in second.items()
               if not stage.startswith("serve-")), second
    out = capsys.readouterr().out
    assert "train-3d: reusing finished run" in out
    assert "serve with:  python -m jobs.serve --model vblt-2d-int8,vblt-3d-int8" in out
    parents = mlflow.search_runs(experiment_names=["test-pipeline"],
                                 filter_string="tags.`framecast.job` = 'pipeline'")
    assert len(parents) == 2
    assert set(parents["metrics.2d_size_ratio"]) and parents["metrics.2d_size_ratio"].min() > 1
