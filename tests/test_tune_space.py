"""Study definitions (tune_spaces/*.yaml): the shipped ones load and fit their data; every
mistake is refused in one line that names the key or value, before Ray starts (no Ray here)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from framecast import tune_report
from framecast.config import ConfigError, parse_args
from framecast.models import registry
from framecast.tune_space import (
    check_metrics,
    check_models,
    load_study,
    model_variants,
    parse_study,
)
from jobs.train import TrainJobConfig
from jobs.tune_study import JOB_CONFIGS as JOBS  # the table the tune job reads studies with

SPACES = Path(__file__).resolve().parents[1] / "tune_spaces"
VALID = {
    "name": "patches", "job": "train",
    "base": {"model": "vblt", "preset": "tiny", "steps": 8},
    "params": {"model_config.patch": {"choice": ["1x4x4", "2x4x4"]},
               "lr": {"loguniform": [1e-3, 1e-2]}},
    "metric": "val_psnr", "mode": "max", "report": ["gflops"],
}


def study(**changes):
    values = copy.deepcopy(VALID)
    values.update(changes)
    return parse_study(values, "space.yaml", JOBS, data="/data/tri")


def test_the_shipped_spaces_load_with_their_searched_flags():
    blocks = load_study(SPACES / "nbp_block_shapes.yaml", JOBS, data="/data/2d")
    assert blocks.job == "train" and blocks.metric == "val_loss" and blocks.mode == "min"
    assert "gen_fps" in blocks.report and blocks.base["data"] == "/data/2d"
    [block] = blocks.params
    assert block.model_field == "block" and block.kind == "grid" and "1x1x1" in block.values
    patches = load_study(SPACES / "vblt_patch_sizes.yaml", JOBS, data="/data/2d")
    assert {p.key for p in patches.params} == {"model_config.patch", "model_config.dim", "lr"}
    assert patches.scheduler.kind == "asha" and "gflops" in patches.report
    quant = load_study(SPACES / "quant_thresholds.yaml", JOBS, data="/data/2d")
    assert quant.job == "quantize" and quant.pareto == {
        "size_ratio": "max", "speedup_b1": "max", "psnr_drop_db": "min"}
    assert {p.key for p in quant.params} == {"tau_low_quantile", "tau_high_quantile",
                                             "tau_psnr_db"}


def test_the_shipped_shapes_fit_the_frames_their_comments_name():
    """Every block shape tiles the small tokenizer's 10x8x8 grid after 2 condition frames of
    12x32x32 clips; every patch tiles 12x16x16 frames."""
    blocks = load_study(SPACES / "nbp_block_shapes.yaml", JOBS, data="/data/2d")
    tokenizer = registry.create("fsq", "small")  # 4x downsampling: 32x32 -> 8x8
    check_models(blocks, "nbp", "small", (12, 32, 32, 1), {"tokenizer": tokenizer})
    patches = load_study(SPACES / "vblt_patch_sizes.yaml", JOBS, data="/data/2d")
    assert len(model_variants(patches)) == 10  # 5 patches x 2 widths
    check_models(patches, "vblt", "demo", (12, 16, 16, 1))
    entropy = load_study(SPACES / "vblt_entropy_patching.yaml", JOBS, data="/data/2d")
    [budget] = entropy.params
    assert budget.model_field == "patch_budget" and 1.0 in budget.values
    assert entropy.pareto == {"gflops": "min", "val_psnr": "max"}
    check_models(entropy, "vblt", "small", (12, 16, 16, 1))


def test_trial_flags_merge_sampled_model_fields_into_the_base_overrides():
    spec = study(base={"model": "vblt", "preset": "tiny", "model_config": "global_layers=2"})
    flags = spec.trial_flags({"model_config.patch": "1x4x4", "lr": 0.002})
    assert flags["model_config"] == "global_layers=2,patch=1x4x4" and flags["lr"] == 0.002
    assert flags["data"] == "/data/tri"


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("changes, message", [
    ({"sampler": "tpe"}, "unknown key(s) ['sampler']"),
    ({"params": {"lrate": {"uniform": [0.1, 0.2]}}}, "params.lrate: train has no flag 'lrate'"),
    ({"base": {"model": "vblt", "preset": "tiny", "epochs": 3}},
     "base.epochs: train has no flag 'epochs'"),
    ({"params": {"model_config.depth": {"choice": [1, 2]}}},
     "params.model_config.depth=1: --model-config: vblt has no field 'depth'"),
    ({"params": {"model_config.patch": {"choice": []}}},
     "params.model_config.patch: choice needs a non-empty list"),
    ({"params": {"lr": {"loguniform": [1e-2, 1e-3]}}},
     "params.lr: loguniform [0.01, 0.001]: lo must be < hi"),
    ({"params": {"steps": {"randint": [5, 5]}}}, "params.steps: randint [5, 5]: lo must be < hi"),
    ({"params": {"lr": {"normal": [0, 1]}}}, "params.lr: unknown distribution 'normal'"),
    ({"params": {"lr": {"uniform": [-1.0, 1e-3]}}}, "params.lr=-1.0: --lr -1.0 must be > 0"),
    ({"base": {"model": "vblt", "preset": "tiny", "steps": -2}},
     "space.yaml: base: --steps -2 must be > 0"),
    ({"mode": "maximize"}, "mode 'maximize' must be min or max"),
    ({"job": "render"}, "job 'render' is unknown; accepted: train, quantize"),
    ({"base": {"model": "vblt", "preset": "tiny", "storage": "/x"}},
     "base.storage: set by the study for each trial"),
    ({"scheduler": {"asha": {"grace_period": 10, "max_t": 5}}},
     "scheduler.asha needs 1 <= grace_period < max_t"),
])
def test_a_bad_space_is_refused_in_one_line_naming_the_key(changes, message):
    with pytest.raises(ConfigError) as err:
        study(**changes)
    assert message in one_line(err)
    assert one_line(err).startswith("space.yaml: ")


def test_a_space_needs_data_and_asha_needs_a_training_job():
    with pytest.raises(ConfigError, match="no data set: give --data DIR"):
        parse_study(copy.deepcopy(VALID), "space.yaml", JOBS)
    quant = {"name": "q", "job": "quantize", "base": {"model": "vblt-2d"},
             "params": {"tau_psnr_db": {"choice": [0.1, 0.3]}}, "metric": "psnr_drop_db",
             "mode": "min", "scheduler": {"asha": {"grace_period": 1, "max_t": 4}}}
    with pytest.raises(ConfigError, match="asha needs a job that reports every step"):
        parse_study(quant, "q.yaml", JOBS, data="/data/tri")


def test_a_patch_that_does_not_tile_the_frames_is_refused_naming_it():
    spec = study(params={"model_config.patch": {"grid": ["1x4x4", "1x5x5"]}})
    check_models(spec, "vblt", "tiny", (4, 20, 20, 1))  # 20x20 takes both
    with pytest.raises(ConfigError) as err:
        check_models(spec, "vblt", "tiny", (4, 16, 16, 1))
    assert "space.yaml: params.model_config.patch=1x5x5: patch 1x5x5 does not tile the data's " \
        "4x16x16" in one_line(err)


def test_a_block_that_does_not_tile_the_token_grid_is_refused_naming_it():
    values = {"name": "blocks", "job": "train",
              "base": {"model": "nbp", "preset": "tiny", "model_config": "tokenizer=fsq-2d"},
              "params": {"model_config.block": {"grid": ["1x2x2", "1x3x3"]}},
              "metric": "val_loss", "mode": "min"}
    spec = parse_study(values, "blocks.yaml", JOBS, data="/data/tri")
    tokenizer = registry.create("fsq", "tiny")  # 16x16 frames -> 4x4 tokens
    with pytest.raises(ConfigError) as err:
        check_models(spec, "nbp", "tiny", (4, 16, 16, 1), {"tokenizer": tokenizer})
    assert "params.model_config.block=1x3x3: block 1x3x3 does not tile the token grid" in (
        one_line(err))


def test_a_metric_the_trials_do_not_report_is_refused():
    spec = study(report=["gflops", "fvd"])
    check_metrics(study(), {"val_psnr", "gflops"})
    with pytest.raises(ConfigError) as err:
        check_metrics(spec, {"val_psnr", "gflops", "val_ssim"})
    assert "report 'fvd' is not among the trial's metrics: gflops, val_psnr, val_ssim" in (
        one_line(err))
    with pytest.raises(ConfigError, match="metric 'val_psrn' is not among"):
        check_metrics(study(metric="val_psrn"), {"val_psnr", "gflops"})


def test_a_config_file_sets_flags_the_command_line_overrides(tmp_path, capsys):
    path = tmp_path / "best.yaml"
    path.write_text("data: /data/tri\npreset: tiny\nsteps: 40\nlr: 0.003\n"
                    "model_config: patch=1x4x4\n")
    config = parse_args(TrainJobConfig, ["--config", str(path), "--steps", "7"])
    assert (config.steps, config.lr, config.preset) == (7, 0.003, "tiny")
    assert config.overrides == {"patch": (1, 4, 4)}
    path.write_text("data: /data/tri\nstep: 40\n")
    with pytest.raises(SystemExit) as exit_info:
        parse_args(TrainJobConfig, ["--config", str(path)], prog="jobs.train")
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "unknown config key(s) ['step']" in err
    assert len(err.strip().splitlines()) == 1


def test_the_pareto_front_keeps_only_undominated_trials():
    rows = [{"size": 4.0, "drop": 0.5}, {"size": 3.0, "drop": 0.1}, {"size": 3.0, "drop": 0.6},
            {"size": 2.0, "drop": 0.1}, {"size": None, "drop": 0.0}]
    assert tune_report.pareto_front(rows, {"size": "max", "drop": "min"}) == [
        True, True, False, False, False]
    ranked = tune_report.rank(rows, "drop", "min")
    assert [r["drop"] for r in ranked][:2] == [0.0, 0.1]
    markdown, csv_text = tune_report.table(rows[:2], ["size", "drop"])
    assert markdown.splitlines()[2] == "| 4 | 0.5 |" and csv_text.splitlines()[1] == "4.0,0.5"


def test_the_plot_numbers_points_whose_labels_would_overlap():
    """Labels beside points closer than 15% of the x range and 6% of the y range would run over
    each other (a block-shape study put 1x2x8 and 2x2x2 on one spot): those plots get numbers
    and a key instead."""
    assert tune_report._crowded([76.7, 103.4, 102.9, 142.8], [2.43, 2.90, 2.89, 2.72])
    assert not tune_report._crowded([76.7, 112.4, 142.8, 99.1], [2.43, 2.45, 2.72, 3.12])
    assert not tune_report._crowded([1.0, 1.0], [0.0, 1.0])  # same x, far apart in y
    rows = [{"x": x, "y": y} for x, y in ((1.0, 2.0), (1.01, 2.01), (3.0, 1.0))]
    png = tune_report.study_plot(rows, "x", "y", labels=["a", "b", "c"], front=[True, False, True])
    assert png.startswith(b"\x89PNG")


@pytest.mark.parametrize("family", ["frame predictor", "token generator"])
def test_a_quantize_trial_may_report_exactly_what_the_quantize_comparison_reports(family):
    """The metrics a quantize study may name are read from the comparison's own key names:
    every number it reports is among them, and nothing else is but the timings of the other
    compute form (bf16) and jobs.quantize's drop in that form."""
    import numpy as np
    import torch
    import toy_models  # noqa: F401  (registers the toy tokenizer)

    from framecast.quant import compare
    from jobs.quantize import LATENCY_BATCH_SIZES, reported_metrics

    torch.manual_seed(0)
    if family == "token generator":
        config = registry.model_config("nbp", "small", dim=24, heads=1, layers=2,
                                       mlp_hidden=48, block=(1, 2, 2))
        model = registry.build("nbp", config, tokenizer=registry.create("toy-patches", "fine"))
        tokens = torch.randint(0, model.tokenizer.codebook_size, (2, 4, 8, 8))
        videos = model.tokenizer.decode(tokens).numpy()  # (2, 4, 16, 16, 1) uint8
    else:
        model = registry.create("vblt", "tiny", frame_shape=(4, 16, 16, 1))
        videos = np.random.default_rng(0).integers(0, 256, (2, 4, 16, 16, 1), dtype=np.uint8)
    model, other = model.eval(), copy.deepcopy(model).eval()
    values = {**compare.compression(model, other),
              **compare.quality(model, other, videos, batch_size=2)}
    timed = family == "frame predictor"  # the timings' keys do not depend on the family
    if timed:
        values.update(compare.deployed_speedups({"fp32": model}, {"fp32": other}, videos,
                                                LATENCY_BATCH_SIZES, repeats=1))
    numbers = {k for k, v in values.items() if not isinstance(v, str)}
    named = reported_metrics(generator=family == "token generator")
    assert numbers <= named
    unmeasured = {k for k in named - numbers if "bf16" not in k}
    assert unmeasured == set() if timed else all(
        k.startswith(("latency_ms_", "speedup_")) for k in unmeasured)
