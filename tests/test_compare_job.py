"""jobs.compare: tables 1 and 2 for every model and copy-last-frame; bad input in one line;
the paper-scale GPU script's CPU smoke mode."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from test_data import write_dataset

from framecast import comparison, model_io, tracking
from framecast import data as fdata
from framecast.config import ConfigError
from framecast.models import create
from framecast.render.spec import RenderConfig
from jobs.compare import CompareConfig, Entrant, choose_lrs, compare, main, merge_data_flags

REPO = Path(__file__).resolve().parents[1]
TINY = {"num_sequences": 20, "frames": 4, "size": 16, "val_fraction": 0.2, "test_fraction": 0.2}
MODELS = ("vblt", "vivit", "unet3d")


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A 2D and a 3D data set (no Ray) and, per data set, an untrained tiny model of each kind
    logged to MLflow as trained on it."""
    root = tmp_path_factory.mktemp("compare")
    dirs = {}
    for kind in ("2d", "3d"):
        dirs[kind] = root / kind
        write_dataset(dirs[kind], RenderConfig(kind=kind, **TINY))
    refs = []
    tracking.use_experiment("test-compare")
    torch.manual_seed(0)
    for kind, name in [(k, n) for k in dirs for n in MODELS]:
        with mlflow.start_run():
            info = model_io.log_model(create(name, "tiny"), name,
                                      extra={"data": str(dirs[kind]), "preset": "tiny"})
        refs.append(info.model_uri)
    return dirs, refs


def test_compare_prints_and_logs_both_tables_with_every_model_and_copy_last(logged, tmp_path,
                                                                            capsys):
    dirs, refs = logged
    code = main(["--data", str(dirs["2d"]), "--data", str(dirs["3d"]), "--models", "",
                 "--runs", ",".join(refs), "--out", str(tmp_path / "t"), "--context", "2",
                 "--experiment", "test-compare"])
    out = capsys.readouterr().out
    assert code == 0
    table2 = out.split("Table 2")[1].split("Rollout PSNR")[0]
    assert "rollouts from the same 2 context frames" in table2
    horizon = out.split("Rollout PSNR")[1].split("Teacher-forced")[0]
    teacher = out.split("Teacher-forced")[1]
    for kind in ("2d", "3d"):
        for name, step in (("vblt", 2), ("vivit", 2), ("unet3d", 1), ("copy-last", "-")):
            assert f"| {kind} | {name} | 2 | {step} |" in table2, (kind, name)  # same context
            assert f"| {kind} | {name} | 2..3 |" in teacher, (kind, name)  # the same frames
            assert f"| {kind} | {name} |" in horizon
    table1 = out.split("Table 1")[1].split("Table 2")[0]
    assert all(f"| {name} | tiny |" in table1 for name in MODELS)
    assert "a multiply-add counted as 2 FLOPs" in table1
    written = {p.name for p in (tmp_path / "t").iterdir()}
    assert {"table1.md", "table1.csv", "table2.md", "table2.csv", "table2.png", "horizon.md",
            "horizon.csv", "horizon.png", "teacher_forced.md", "teacher_forced.csv"} <= written
    rows = list(csv.DictReader((tmp_path / "t" / "table2.csv").open()))
    vblt = next(r for r in rows if r["data"] == "2d" and r["model"] == "vblt")
    copy = next(r for r in rows if r["data"] == "2d" and r["model"] == "copy-last")
    assert vblt["paper PSNR"] == "32.3" and copy["paper PSNR"] == ""
    held = comparison.hold_last_metrics(fdata.load_numpy(dirs["2d"], "test")[0], 2)
    assert float(copy["PSNR"]) == pytest.approx(float(np.mean(held["psnr"])))
    costs = list(csv.DictReader((tmp_path / "t" / "table1.csv").open()))
    assert all(float(r["GFLOPs 12x64x64"]) > float(r["GFLOPs"]) for r in costs)

    (parent,) = mlflow.search_runs(experiment_names=["test-compare"], output_format="list",
                                   filter_string="tags.`framecast.job` = 'compare'")
    assert "2d_copy_last_psnr" in parent.data.metrics and "3d_vivit_ssim" in parent.data.metrics
    assert "2d_vblt_tf_psnr" in parent.data.metrics and "3d_unet3d_psnr_ahead" in (
        parent.data.metrics)
    ahead = mlflow.MlflowClient().get_metric_history(parent.info.run_id, "2d_vblt_psnr_ahead")
    assert sorted(m.step for m in ahead) == [1, 2]
    children = mlflow.search_runs(experiment_names=["test-compare"], output_format="list",
                                  filter_string=f"tags.mlflow.parentRunId = "
                                                f"'{parent.info.run_id}'")
    assert len(children) == 6
    for child in children:
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(child.info.run_id,
                                                                       "figures")}
        assert names == {"figures/prediction.png"}


def test_copy_last_scores_the_frame_before_and_the_model_its_own_prediction():
    videos = np.random.default_rng(0).integers(0, 256, (3, 6, 8, 8, 1), dtype=np.uint8)
    s = comparison.copy_last_score(videos, 2)
    diff = (videos[:, 2:].astype(float) - videos[:, 1:-1]) / 255
    assert s["mse"] == pytest.approx((diff ** 2).mean())


def test_data_given_twice_becomes_one_list():
    assert merge_data_flags(["--data", "a", "--steps", "3", "--data=b"]) == [
        "--steps", "3", "--data", "a,b"]


@pytest.mark.parametrize("argv, message", [
    ([], "--data is required"),
    (["--data", "/nonexistent"], "/nonexistent does not exist"),
    (["--data", "x", "--models", "vblt,gpt5"], "model 'gpt5' is unknown"),
    (["--data", "x", "--models", "fsq"], "not a frame predictor"),
    (["--data", "x", "--preset", "huge"], "preset 'huge'"),
    (["--data", "x", "--steps", "0"], "--steps 0 must be > 0"),
    (["--data", "a", "--data", "b", "--data", "c"], "give one or two"),
    (["--data", "x", "--lrs", "1e-3,fast"], "give positive numbers"),
    (["--data", "x", "--lrs", "0,1e-3"], "give positive numbers"),
    (["--data", "x", "--lrs", "1e-3,2e-3", "--runs", "vblt-2d@latest"], "cannot choose for"),
    (["--data", "x", "--context", "0"], "--context 0: give at least 1 frame"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:  # flags the config refuses: parse_args exits
        code = exit.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("context, message", [
    ("4", "--context 4: the clips of"),  # 4-frame clips: 1..3
    ("1", "--context 1: vblt (tiny) needs at least 2 context frames"),
])
def test_a_context_the_clips_or_a_model_cannot_give_is_refused_before_any_run(
        logged, context, message, capsys):
    dirs, _ = logged
    before = len(mlflow.search_runs(search_all_experiments=True, output_format="list"))
    code = main(["--data", str(dirs["2d"]), "--models", "vblt,unet3d", "--preset", "tiny",
                 "--batch-size", "2", "--context", context, "--experiment", "test-compare"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert len(mlflow.search_runs(search_all_experiments=True, output_format="list")) == before


def test_the_lr_with_the_best_val_psnr_wins_ties_go_to_the_smaller():
    chosen, rows = comparison.pick_by_val([
        ("vblt@a", 1e-3, 20.0), ("vblt@a", 2e-3, 21.5), ("vblt@a", 4e-3, 19.0),
        ("unet3d@a", 1e-3, 18.0), ("unet3d@a", 2e-3, 18.0),   # tie
        ("vivit@a", 1e-3, None), ("vivit@a", 2e-3, 15.0),     # no val point loses
        ("vblt@b", 4e-3, None), ("vblt@b", 2e-3, None)])      # none has one: the smallest lr
    assert chosen == {"vblt@a": 2e-3, "unet3d@a": 1e-3, "vivit@a": 2e-3, "vblt@b": 2e-3}
    assert [r["chosen"] for r in rows] == [False, True, False, True, False, False, True,
                                           False, True]


def test_compare_keeps_per_model_and_data_the_run_best_on_val_and_tags_every_run(tmp_path):
    tracking.use_experiment("test-compare-lrs")
    finals = {("vblt", 1e-3): 20.0, ("vblt", 2e-3): 22.0, ("unet3d", 1e-3): 19.0,
              ("unet3d", 2e-3): 18.5}
    entrants = []
    for (name, lr), final in finals.items():
        with mlflow.start_run() as run:
            mlflow.log_metric("val_psnr", final - 5, step=10)
            mlflow.log_metric("val_psnr", final, step=20)  # the final point decides
            mlflow.log_metric("val_psnr", final + 9, step=5)  # logged late, an earlier step
        entrants.append(Entrant(name, "d", plan=object(), run_id=run.info.run_id, lr=lr))
    logged = Entrant("vivit", "d", model=object(), run_id="x")  # --runs: never dropped
    kept, sweep = choose_lrs([*entrants, logged], {"d": "2d"})
    assert [(e.name, e.lr) for e in kept] == [("vblt", 2e-3), ("unet3d", 1e-3), ("vivit", 0.0)]
    assert [(r["model"], r["lr"], r["final val PSNR"], r["chosen"]) for r in sweep] == [
        ("vblt", 1e-3, 20.0, False), ("vblt", 2e-3, 22.0, True), ("unet3d", 1e-3, 19.0, True),
        ("unet3d", 2e-3, 18.5, False)]
    tags = [mlflow.get_run(e.run_id).data.tags["framecast.compare_lr"] for e in entrants]
    assert tags == ["not chosen", "chosen", "chosen", "not chosen"]
    one_each = [entrants[1], entrants[2]]
    assert choose_lrs(one_each, {"d": "2d"}) == (one_each, [])  # nothing to choose


def test_the_lr_choice_reads_the_final_val_psnr_with_the_chosen_decoding(tmp_path):
    tracking.use_experiment("test-compare-lrs-final")
    entrants = []
    for lr, curve, final in [(1e-3, 20.0, 19.0), (2e-3, 18.0, 21.0)]:
        with mlflow.start_run() as run:
            mlflow.log_metric("val_psnr", curve, step=20)  # during training: default decoding
            mlflow.log_metric("final_val_psnr", final, step=20)  # at the end: chosen decoding
        entrants.append(Entrant("vblt", "d", plan=object(), run_id=run.info.run_id, lr=lr))
    kept, sweep = choose_lrs(entrants, {"d": "3d"})
    assert [e.lr for e in kept] == [2e-3]
    assert [r["final val PSNR"] for r in sweep] == [19.0, 21.0]


def test_the_lr_choice_can_score_each_run_by_the_rollout_protocol(tmp_path):
    tracking.use_experiment("test-compare-lrs-rollout")
    entrants = []
    for lr in (1e-3, 2e-3):
        with mlflow.start_run() as run:
            mlflow.log_metric("final_val_psnr", 30.0 if lr == 1e-3 else 10.0)  # not the criterion
        entrants.append(Entrant("vblt", "d", plan=object(), run_id=run.info.run_id, lr=lr))
    kept, sweep = choose_lrs(entrants, {"d": "2d"}, score=lambda e: 1000 * e.lr)
    assert [e.lr for e in kept] == [2e-3]
    assert [r["val rollout PSNR"] for r in sweep] == [1.0, 2.0]


def test_help_explains_the_job():
    out = subprocess.run([sys.executable, "-m", "jobs.compare", "--help"], cwd=REPO,
                         capture_output=True, text=True, check=True).stdout
    assert "Table 1" in out and "--runs" in out and "copy-last" in out


def test_the_gpu_script_runs_without_ray_mlflow_or_pyvista_and_fits_its_budget(
        tmp_path, run_gpu_script):
    out = tmp_path / "g"
    # The carried tokenizer library is not needed by the V-BLT/baseline comparison either.
    run = run_gpu_script("compare_gpu.py", ["--smoke", "--budget-s", "60", "--out", str(out),
                                            "--variant", "vblt_ord=vblt:init=ordinal"],
                         also=("vector_quantize_pytorch",))
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    assert lines[-1].startswith("RESULT compare_gpu rollout_psnr_vblt_2d=")
    assert " psnr_copy_3d=" in lines[-1] and " rollout_psnr_copy_3d=" in lines[-1]
    assert "context=2" in lines[-1]
    assert sum(line.startswith("probe: ") for line in lines) == 4  # the variant too
    assert {"table1.csv", "table2.csv", "horizon.csv", "horizon.png", "teacher_forced.csv",
            "curves.csv", "budget.json"} <= {p.name for p in out.iterdir()}
    assert "| 2d | unet3d | 2 | 1 |" in run.stdout  # rollout rows: same context, own steps
    budget = json.loads((out / "budget.json").read_text())
    assert budget["steps"] == 4
    assert set(budget["probe_s_per_step"]) == {"vblt", "vivit", "unet3d", "vblt_ord"}
    assert budget["variants"] == {"vblt_ord": {"model": "vblt", "init": "ordinal"}}
    assert " rollout_psnr_vblt_ord_3d=" in lines[-1]
    assert not budget["failed"] and len(budget["train_seconds"]) == 8
    # each model read on test with the decoding that scored best on val, recorded
    assert len(budget["decode"]) == 8
    for choice in budget["decode"].values():
        assert choice["chosen"] == max(("trimmed", "mean", "argmax"), key=lambda d: choice[d])


def test_a_gpu_variant_is_a_registered_model_with_its_overrides_or_a_one_line_error():
    from benchmarks.compare_gpu import build, parse_variant

    label, spec = parse_variant("vblt_ob=vblt:init=ordinal,byte_skip=true")
    assert (label, spec) == ("vblt_ob", ("vblt", {"init": "ordinal", "byte_skip": True}))
    model = build(label, "tiny", {label: spec})
    assert model.cfg.init == "ordinal" and model.cfg.byte_skip
    assert build("vblt", "tiny", {label: spec}).cfg.init == "gpt"  # the plain row unchanged
    for bad in ("vblt=vblt:init=ordinal",  # a label that hides a registered model
                "no label", "a b=vblt:init=ordinal", "x=nope:init=ordinal",
                "x=vblt:nokey=1", "x=vblt:heads=-1"):
        with pytest.raises(ValueError, match="--variant"):
            parse_variant(bad)


def test_the_gpu_script_refuses_a_run_with_no_model_in_one_line(capsys):
    from benchmarks.compare_gpu import main

    with pytest.raises(SystemExit) as exit_:
        main(["--quick", "--models", ""])
    assert exit_.value.code == 2
    assert "--models and --variant name no model" in capsys.readouterr().err


def test_the_gpu_script_trains_the_kinds_and_seed_it_is_given(tmp_path, capsys):
    """--kinds 3d scores 3D alone; --seed reaches the training (another init, recorded)."""
    from benchmarks.compare_gpu import main

    results = {}
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        assert main(["--quick", "--models", "vblt", "--kinds", "3d", "--seed", str(seed),
                     "--out", str(out)]) == 0
        results[seed] = capsys.readouterr().out.strip().splitlines()[-1]
        assert json.loads((out / "budget.json").read_text())["seed"] == seed
    assert "_3d=" in results[0] and "_2d=" not in results[0] and results[0].endswith("seed=0")
    loss = {seed: (tmp_path / f"s{seed}" / "curves.csv").read_text() for seed in (0, 1)}
    assert loss[0] != loss[1]
    with pytest.raises(SystemExit):
        main(["--quick", "--kinds", "4d"])


def test_the_gpu_budget_gives_every_model_the_same_steps_that_fit():
    from benchmarks.compare_gpu import plan_steps

    probe = {"vblt": 0.05, "vivit": 0.02, "unet3d": 0.03}  # 0.1 s for one step of all three
    assert plan_steps(probe, kinds=2, budget_s=360, max_steps=3000) == 1800
    assert plan_steps(probe, kinds=2, budget_s=365, max_steps=3000) == 1800  # multiple of 50
    assert plan_steps(probe, kinds=1, budget_s=1000, max_steps=3000) == 3000  # capped
    assert plan_steps(probe, kinds=1, budget_s=3, max_steps=3000) == 30  # under one multiple
    with pytest.raises(ValueError, match="does not fit one step"):
        plan_steps(probe, kinds=2, budget_s=0.1, max_steps=3000)


@pytest.mark.slow  # three Ray Train fits (~25 s of start-up each)
def test_compare_trains_every_model_through_ray_train_on_a_tiny_preset(ray_local, tmp_path,
                                                                        capsys, monkeypatch):
    from framecast import data as fdata
    from framecast.distribution import DECODES

    # the decoding choices (jobs.train's and compare's by val rollouts), made to pick argmax:
    # table 2 must read it that way
    monkeypatch.setattr("framecast.predict.choose_decode",
                        lambda model, videos, batch_size=8, context=None: (
                            "argmax", dict.fromkeys(DECODES, 0.0)))
    data = tmp_path / "tri"
    write_dataset(data, RenderConfig(kind="2d", **TINY))
    result = compare(CompareConfig(data=str(data), preset="tiny", steps=4, batch_size=2,
                                   context=2,
                                   eval_every=2, eval_sequences=2, log_every=2,
                                   checkpoint_every=4, storage=str(tmp_path / "ray"),
                                   out=str(tmp_path / "t"), experiment="test-compare-train"))
    out = capsys.readouterr().out
    for name in (*MODELS, "copy-last"):
        assert f"| 2d | {name} |" in out, name
    curves = {(r["model"], r["step"]) for r in result["curves"]}
    assert {(m, s) for m in MODELS for s in (2, 4)} <= curves
    child = mlflow.get_run(next(r for r in mlflow.search_runs(
        experiment_names=["test-compare-train"], output_format="list",
        filter_string="tags.`framecast.model` = 'unet3d'")).info.run_id)
    assert child.data.params["steps"] == "4" and "test_psnr" in child.data.metrics
    assert "test_rollout_psnr" in child.data.metrics
    logged, _ = model_io.load_logged_model(child.info.run_id)
    assert logged.cfg.decode == child.data.tags["framecast.decode"] == "argmax"
    assert child.data.tags["framecast.rollout_decode"] == "argmax"
    test, _ = fdata.load_numpy(data, "test")
    row = next(r for r in result["quality"] if r["model"] == "unet3d")  # rollouts, argmax
    assert row["PSNR"] == pytest.approx(float(np.mean(
        comparison.rollout_metrics(logged, test, 2)["psnr"])))
    row = next(r for r in result["teacher_forced"] if r["model"] == "unet3d")
    context = int(str(row["frames"]).split("..")[0])
    assert row["PSNR"] == pytest.approx(comparison.score(logged, test, context)["psnr"])


@pytest.mark.slow  # two Ray Train fits
def test_compare_chooses_each_models_lr_on_val_through_ray_train(ray_local, tmp_path, capsys):
    data = tmp_path / "tri"
    write_dataset(data, RenderConfig(kind="2d", **TINY))
    result = compare(CompareConfig(data=str(data), models="vivit", lrs="1e-3,3e-2",
                                   context=2,
                                   preset="tiny", steps=4, batch_size=2, eval_every=2,
                                   eval_sequences=2, log_every=2, checkpoint_every=4,
                                   storage=str(tmp_path / "ray"), out=str(tmp_path / "t"),
                                   experiment="test-compare-lrs-train"))
    out = capsys.readouterr().out
    sweep = result["lr_sweep"]
    assert [(r["model"], r["lr"]) for r in sweep] == [("vivit", 1e-3), ("vivit", 3e-2)]
    assert sum(r["chosen"] for r in sweep) == 1 and "lr chosen on val: vivit 2d" in out
    best = max(sweep, key=lambda r: (r["val rollout PSNR"], -r["lr"]))
    assert best["chosen"]
    assert [r["model"] for r in result["quality"]] == ["copy-last", "vivit"]  # one row, chosen
    assert (tmp_path / "t" / "lr_sweep.csv").exists()
    runs = mlflow.search_runs(experiment_names=["test-compare-lrs-train"], output_format="list",
                              filter_string="tags.`framecast.model` = 'vivit'")
    tags = sorted(r.data.tags["framecast.compare_lr"] for r in runs)
    assert tags == ["chosen", "not chosen"]
    chosen = next(r for r in runs if r.data.tags["framecast.compare_lr"] == "chosen")
    assert float(chosen.data.params["lr"]) == best["lr"] and "test_psnr" in chosen.data.metrics
    # chosen by the rollout PSNR on val, read the way the model will be read (its chosen
    # decoding), logged in its run
    assert best["val rollout PSNR"] == chosen.data.metrics["val_rollout_psnr"]


def test_an_ablation_row_splits_model_fields_from_training_options_and_refuses_bad_ones():
    from benchmarks.vblt_ablation import ROWS, parse_row
    from framecast.config import ConfigError

    assert parse_row("vblt:init=scaled,own_inputs=0.5,patch=1x4x4") == (
        "vblt", {"init": "scaled", "patch": (1, 4, 4)}, {"own_inputs": 0.5})
    assert parse_row("unet3d") == ("unet3d", {}, {})
    for row in ROWS.values():  # every shipped row builds
        parse_row(row)
    for bad, message in (("vblt:dimm=3", "no field 'dimm'"), ("gpt5", "unknown"),
                         ("vblt:own_inputs=lots", "not a number"),
                         ("vblt:init=unit", "init='unit'")):
        with pytest.raises(ConfigError, match=message):
            parse_row(bad)


def test_runs_alone_train_nothing_and_a_logged_model_keeps_its_own_row(logged):
    """`--runs` without `--models` trained the default three as well (the docstring's
    "logged: no training" example), and a logged vblt beside a trained vblt shared its table
    row, one replacing the other."""
    from jobs.compare import prepare

    dirs, refs = logged
    assert CompareConfig(data="x", runs=refs[0]).model_names == []
    assert CompareConfig(data="x").model_names == ["vblt", "vivit", "unet3d"]
    assert CompareConfig(data="x", models="unet3d", runs=refs[0]).model_names == ["unet3d"]
    with pytest.raises(ConfigError, match="nothing to compare"):
        CompareConfig(data="x", models="none")
    _, entrants = prepare(CompareConfig(data=str(dirs["2d"]), models="vblt", preset="tiny",
                                        runs=f"{refs[0]},{refs[1]}", context=2), "t")
    assert [e.name for e in entrants] == ["vblt", f"vblt ({refs[0]})", "vivit"]
