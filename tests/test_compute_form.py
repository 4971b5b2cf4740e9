"""Choosing a model's compute form (fp32, or bf16 where native) by measurement."""

import numpy as np
import pytest
import torch

from framecast.models import create
from framecast.quant import compute_form, kernels


def test_the_faster_form_over_the_batch_sizes_is_kept_and_a_lone_form_is_never_timed():
    calls = []
    ms = {"fp32": {1: 10.0, 8: 80.0}, "bf16": {1: 11.0, 8: 40.0}}

    def time_ms(model, batch):
        calls.append((model, batch))
        return ms[model][batch]
    choice = compute_form.fastest({"fp32": "fp32", "bf16": "bf16"}, time_ms, (1, 8), rounds=2)
    # mean ratio to fp32: bf16 (1.1 + 0.5) / 2 = 0.8 < 1: kept, though slower at batch 1
    assert choice.chosen == "bf16" and choice.ms == ms and len(calls) == 8
    assert "fastest measured" in choice.why() and choice.record()["ms"]["bf16"]["8"] == 40.0
    calls.clear()
    assert compute_form.fastest({"fp32": "fp32"}, time_ms, (1, 8)).chosen == "fp32"
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
    assert out["speedup_b1"] == pytest.approx(20.5 / 10.5)
