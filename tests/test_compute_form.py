"""Choosing a model's compute form (fp32, or bf16 where native) by measurement."""

import numpy as np
import pytest
import torch

from framecast.models import create
from framecast.quant import compute_form, kernels


def test_the_faster_form_at_each_batch_size_is_kept_and_a_lone_form_is_never_timed():
    calls = []
    ms = {"fp32": {1: 10.0, 8: 80.0}, "bf16": {1: 11.0, 8: 40.0}}

    def time_ms(model, batch):
        calls.append((model, batch))
        return ms[model][batch]
    choice = compute_form.fastest({"fp32": "fp32", "bf16": "bf16"}, time_ms, (1, 8), rounds=2)
    # fp32 wins batch 1, bf16 a full batch: each kept for its batch sizes, the full batch's
    # form named as the choice
    assert choice.ms == ms and len(calls) == 8
    assert choice.by_batch == {1: "fp32", 8: "bf16"} and choice.chosen == "bf16"
    assert [choice.form_for(b) for b in (1, 2, 3, 8, 9)] == ["fp32", "bf16", "bf16", "bf16",
                                                             "bf16"]
    assert set(choice.forms()) == {"fp32", "bf16"}
    assert "fp32 at batch 1" in choice.why() and "bf16 at batch 8" in choice.why()
    assert choice.record()["ms"]["bf16"]["8"] == 40.0
    assert choice.record()["by_batch"] == {"1": "fp32", "8": "bf16"}
    ms["bf16"][1] = 9.0  # faster everywhere: one form kept
    choice = compute_form.fastest({"fp32": "fp32", "bf16": "bf16"}, time_ms, (8, 1), rounds=1)
    assert choice.forms() == ("bf16",) and choice.why().startswith("bf16: fastest measured")
    calls.clear()
    lone = compute_form.fastest({"fp32": "fp32"}, time_ms, (1, 8))
    assert lone.chosen == "fp32" and lone.forms() == ("fp32",) and lone.form_for(4) == "fp32"
    assert calls == []  # one candidate: nothing to time


def test_bf16_is_a_compute_form_only_where_native(monkeypatch):
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx2"}))
    assert compute_form.available() == ("fp32",)
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"amx_bf16"}))
    assert compute_form.available() == ("fp32", "bf16")
    assert compute_form.available("cuda") == ("fp32", "bf16")


def test_in_form_copies_unless_told_and_converts_only_for_bf16():
    model = create("vblt", "tiny")
    same = compute_form.in_form(model, "fp32", copy_model=False)
    assert same is model
    half = compute_form.in_form(model, "bf16")
    assert half is not model and next(half.parameters()).dtype == torch.bfloat16
    assert next(model.parameters()).dtype == torch.float32  # the original untouched
    with pytest.raises(ValueError, match="expected one of"):
        compute_form.candidates("int4", {})


@pytest.mark.parametrize("name", ["vblt", "vivit", "unet3d"])
def test_every_frame_predictor_runs_in_bf16_float_and_quantized(name):
    """The bf16 form of each frame predictor, float and W8A8: bytes become bf16 inside the
    model (not float32), so every layer gets inputs of its own dtype."""
    from framecast.quant.apply import layer_roles, quantize_model
    from framecast.quant.gemm_form import linearize
    from framecast.quant.plan import PlanEntry, Precision

    torch.manual_seed(0)
    model = create(name, "tiny").eval()
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    quant = create(name, "tiny").eval()
    quant.load_state_dict(model.state_dict())
    linearize(quant)
    quantize_model(quant, [PlanEntry(n, 0.0, Precision.INT8) for n in layer_roles(quant)])
    with torch.no_grad():
        want = model(video).float().log_softmax(-1)
        for form in (compute_form.in_form(model, "bf16"), compute_form.in_form(quant, "bf16")):
            got = form(video)
            assert got.dtype == torch.bfloat16 and got.shape == want.shape
            kl = (want.exp() * (want - got.float().log_softmax(-1))).sum(-1).mean()
            assert kl < 0.05, (name, float(kl))


def test_fast_calls_get_more_passes_and_the_median_round_is_kept(monkeypatch):
    from framecast.quant import compare

    assert compare.timed_passes(20.0, 3, 300.0) == 15  # a 20 ms call: 15 passes span 300 ms
    assert compare.timed_passes(200.0, 3, 300.0) == 3
    assert compare.timed_passes(0.001, 3, 300.0) == compare.MAX_PASSES
    assert compare.timed_passes(20.0, 3, 0.0) == 3
    fp32, quant = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    # per model: the first (warm) call, then one median per round; one descheduled round each
    times = {id(fp32): iter([20.0, 20.0, 100.0, 21.0, 19.0]),
             id(quant): iter([20.0, 10.0, 11.0, 9.0, 50.0])}
    passes = []

    def latency_ms(model, video, repeats=5, warmup=1):
        passes.append(repeats)
        return next(times[id(model)])
    monkeypatch.setattr(compare, "latency_ms", latency_ms)
    out = compare.deployed_speedups({"fp32": fp32}, {"fp32": quant},
                                    np.zeros((1, 2, 4, 4, 1), np.uint8), (1,), repeats=3,
                                    span_ms=300.0, rounds=4)
    assert passes == [1, 1] + [15] * 8
    assert out["latency_ms_fp32_b1"] == 20.5 and out["latency_ms_quant_b1"] == 10.5
    # the ratio is paired round by round (20/10, 100/11, 21/9, 19/50), the median of those:
    # a round that slowed one form alone moves one ratio, not the answer
    assert out["speedup_b1"] == pytest.approx((20 / 10 + 21 / 9) / 2)
    assert compare.paired_ratio([20.0, 100.0, 21.0, 19.0], [10.0, 11.0, 9.0, 50.0]) \
        == pytest.approx((20 / 10 + 21 / 9) / 2)


def test_forms_are_chosen_per_batch_size_for_the_float_and_the_quantized_model(monkeypatch):
    """fp32 faster at batch 1, bf16 at batch 8 (an NBP generator on Zen 4 measured so): the best
    float form and the deployed quantized one are each chosen per batch size, and the ratio at
    batch 8 is against bf16, not against the form that won batch 1."""
    from framecast.quant import compare

    models = {name: torch.nn.Linear(1, 1) for name in ("f32", "f16", "q32", "q16")}
    ms = {"f32": {1: 50.0, 8: 240.0}, "f16": {1: 58.0, 8: 220.0},
          "q32": {1: 52.0, 8: 250.0}, "q16": {1: 60.0, 8: 210.0}}
    name_of = {id(m): n for n, m in models.items()}
    monkeypatch.setattr(compare, "latency_ms", lambda model, video, repeats=5, warmup=1:
                        ms[name_of[id(model)]][len(video)])
    out = compare.deployed_speedups({"fp32": models["f32"], "bf16": models["f16"]},
                                    {"fp32": models["q32"], "bf16": models["q16"]},
                                    np.zeros((1, 2, 4, 4, 1), np.uint8), (1, 8), rounds=3)
    assert (out["best_float_b1"], out["best_float_b8"]) == ("fp32", "bf16")
    assert (out["quant_compute_b1"], out["quant_compute_b8"]) == ("fp32", "bf16")
    assert (out["best_float"], out["quant_compute"]) == ("bf16", "bf16")  # the largest batch's
    assert out["speedup_vs_best_float_b1"] == pytest.approx(50 / 52)
    assert out["speedup_vs_best_float_b8"] == pytest.approx(220 / 210)
    assert out["latency_ms_quant_b8"] == 210.0 and out["speedup_b8"] == pytest.approx(240 / 210)
