"""The quantize job end to end on a tiny model: MLflow run, registry version, alias, reload."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from test_data import write_dataset

from framecast import model_io, tracking
from framecast.models import create
from framecast.quant import compute_form, kernels
from framecast.quant.int8 import Int8Linear
from framecast.render.spec import RenderConfig
from jobs.quantize import QuantizeJobConfig, main, quantize

TINY_DATA = RenderConfig(kind="2d", num_sequences=20, frames=4, size=16, val_fraction=0.2,
                         test_fraction=0.2)


@pytest.fixture(scope="module")
def fp32_model(tmp_path_factory):
    """A data set and a registered tiny fp32 model (untrained: quantization does not care)."""
    data = tmp_path_factory.mktemp("quant") / "data"
    write_dataset(data, TINY_DATA)
    torch.manual_seed(0)
    tracking.use_experiment("test-quantize")
    with mlflow.start_run() as run:
        info = model_io.log_model(create("vblt", "tiny"), "vblt", registered_name="qtest-2d",
                                  extra={"frame_shape": [4, 16, 16, 1], "preset": "tiny"})
    mlflow.MlflowClient().set_registered_model_alias("qtest-2d", "champion",
                                                     info.registered_model_version)
    return data, run.info.run_id, info.model_uri


def test_every_kind_of_model_reference_leads_back_to_its_run(fp32_model):
    _, run_id, uri = fp32_model
    for ref in (run_id, f"runs:/{run_id}/model", uri, "qtest-2d", "qtest-2d@champion",
                "models:/qtest-2d/1"):
        assert model_io.source_run_id(ref) == run_id, ref


def test_quantize_registers_a_linked_candidate_that_reloads_identically(fp32_model):
    data, fp32_run, _ = fp32_model
    out = quantize(QuantizeJobConfig(model="qtest-2d", data=str(data), batch_size=4,
                                     register="qtest-2d-int8",
                                     eval_sequences=4, stage_steps=1, final_steps=1,
                                     calib_batches=1, latency_repeats=1, latency_span_ms=0,
                                     experiment="test-quantize"))
    values = out["metrics"]
    assert values["size_ratio"] > 2.0  # tiny: small matrices, so scales and norms weigh more
    for key in ("speedup_b1", "speedup_b8", "psnr_drop_db", "ssim_drop", "kl_fp32_quant",
                "cross_entropy_increase"):
        assert np.isfinite(values[key])
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias("qtest-2d-int8", "candidate")
    assert str(version.version) == str(out["version"])
    assert version.tags["fp32_run_id"] == fp32_run
    run = client.get_run(out["run_id"])
    assert run.data.tags["framecast.fp32_run_id"] == fp32_run
    assert run.data.metrics["size_ratio"] == pytest.approx(values["size_ratio"])
    artifacts = {a.path for a in client.list_artifacts(out["run_id"], "quantization")}
    assert {"quantization/plan.json", "quantization/stages.json"} <= artifacts
    # plan.json shows the compute form each W8A8 layer chose here, per token class
    saved = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=out["run_id"], artifact_path="quantization/plan.json")).read_text())
    int8_rows = [r for r in saved if r["precision"] != "fp16"]
    assert int8_rows and all(r["forms"] for r in int8_rows)
    assert all(f in ("int8", *kernels.FORM_DTYPES) for r in int8_rows
               for f in r["forms"].values())

    # The deployed compute form and the best float form, measured side by side; bf16 only
    # where native, and for the quantized model only once its bf16 form passed its PSNR check.
    forms = compute_form.available()
    assert values["best_float"] in forms and values["quant_compute"] in forms
    for b in (1, 8):
        assert values[f"best_float_b{b}"] in forms and values[f"quant_compute_b{b}"] in forms
        assert np.isfinite(values[f"speedup_vs_best_float_b{b}"])
        assert ("latency_ms_bf16_b1" in values) == ("bf16" in forms)
    model, meta = model_io.load_logged_model("qtest-2d-int8@candidate")
    assert meta["precision"] == "w8a8" and meta["frame_shape"] == [4, 16, 16, 1]
    record = meta["bf16_compute"]
    assert record["measured"] == ("bf16" in forms)
    if record["measured"]:
        assert record["allowed"] == (record["psnr_drop_db"] <= 0.3)
    if "bf16" in (values["quant_compute_b1"], values["quant_compute_b8"]):
        assert record["allowed"]
    assert any(isinstance(m, Int8Linear) for m in model.modules())
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(video), out["model"](video))


def test_quantizing_a_quantized_model_or_a_missing_one_exits_2(fp32_model, capsys):
    data, _, _ = fp32_model
    if not mlflow.MlflowClient().search_model_versions("name='qtest-2d-int8'"):
        pytest.skip("needs the registered int8 model of the test above")
    assert main(["--model", "qtest-2d-int8@candidate", "--data", str(data)]) == 2
    assert "already quantized" in capsys.readouterr().err
    assert main(["--model", "no-such-model", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-model" in err[0]


def test_bad_quantize_flags_exit_2(capsys):
    with pytest.raises(SystemExit, match="2") as exc:
        main(["--model", "m", "--data", "d", "--tau-low", "3", "--tau-high", "1"])
    assert exc.value.code == 2
    assert "tau_low" in capsys.readouterr().err


def test_a_token_generator_is_quantized_judged_by_generation_and_registered(fp32_model):
    """NBP with an FSQ tokenizer: the generator's linears go W8A8, the tokenizer stays float,
    the report scores greedy continuations, and the registered candidate generates alike."""
    from framecast.models import registry

    data, _, _ = fp32_model
    torch.manual_seed(0)
    nbp = registry.build("nbp", registry.model_config("nbp", "tiny", tokenizer="fsq-q"),
                         tokenizer=registry.create("fsq", "tiny"))
    with mlflow.start_run():
        model_io.log_model(nbp, "nbp", registered_name="qtest-nbp-2d",
                           extra={"frame_shape": [4, 16, 16, 1], "preset": "tiny"})
    out = quantize(QuantizeJobConfig(model="qtest-nbp-2d", data=str(data), batch_size=4,
                                     eval_sequences=4, stage_steps=1, final_steps=1,
                                     calib_batches=1, latency_repeats=1, latency_span_ms=0,
                                     experiment="test-quantize"))
    values = out["metrics"]
    assert out["registered"] == "nbp-2d-int8"  # <architecture>-<kind>-int8
    # tiny: the float token embedding (1001 x 24) is a third of the generator (1.5x measured).
    assert values["size_ratio"] > 1.3 and values["bytes_total_fp32"] > values["bytes_fp32"]
    for key in ("speedup_b8", "psnr_drop_db", "cross_entropy_increase", "token_agreement",
                "psnr_quant_vs_fp32"):
        assert np.isfinite(values[key]), key
    assert {e.layer.split(".")[0] for e in out["plan"]} <= {"layers", "head"}
    client = mlflow.MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(out["run_id"], "generation")}
    assert artifacts == {"generation/truth_fp32_quantized.gif"}
    model, meta = model_io.load_logged_model("nbp-2d-int8@candidate")
    assert meta["precision"] == "w8a8" and meta["components"]["tokenizer"]["name"] == "fsq"
    context = torch.randint(0, 256, (2, 1, 16, 16, 1), dtype=torch.uint8)
    assert torch.equal(model.generate(context, 3, seed=[1, 2]),
                       out["model"].generate(context, 3, seed=[1, 2]))


def test_the_report_reads_each_ratio_the_right_way_round():
    from jobs.quantize import ratio_words, report_table

    assert ratio_words(1.15, "faster", "slower") == "1.15x faster"
    assert ratio_words(0.87, "faster", "slower") == "1.15x slower"
    table = report_table({"bytes_fp32": 4e6, "bytes_quant": 1e6, "size_ratio": 4.0,
                          "latency_ms_fp32_b1": 10.0, "latency_ms_quant_b1": 12.5,
                          "speedup_b1": 0.8})
    assert "4.00x smaller" in table and "1.25x slower" in table and "faster" not in table


@pytest.mark.parametrize(("flags", "message"), [
    (["--alias", "latest"], "--alias 'latest': an alias is"),
    (["--register", "a/b"], "--register 'a/b': a registered model name"),
])
def test_names_mlflow_refuses_exit_2_before_any_work(flags, message, capsys):
    """Before, they failed with a traceback after calibration, fine-tuning and logging."""
    with pytest.raises(SystemExit) as exc:
        main(["--model", "m", "--data", "d", *flags])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_an_int8_model_under_the_fp32_model_s_own_name_is_refused(fp32_model, capsys):
    data, _, _ = fp32_model
    client = mlflow.MlflowClient()
    before = len(client.search_model_versions("name='qtest-2d'"))
    assert main(["--model", "qtest-2d", "--data", str(data), "--register", "qtest-2d"]) == 2
    assert "--register qtest-2d: its versions are float models" in capsys.readouterr().err
    assert len(client.search_model_versions("name='qtest-2d'")) == before
