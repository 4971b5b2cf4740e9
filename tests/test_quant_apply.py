"""Applying a precision plan to a whole model: patch convs as GEMMs, roles, schedule, save/load."""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from framecast import model_io
from framecast.models import create
from framecast.models.vblt import VBLT
from framecast.quant.apply import (
    QUANTIZED_TYPES,
    layer_roles,
    precision_counts,
    quantize_model,
    replace_layers,
    state_bytes,
    to_bf16,
)
from framecast.quant.gemm_form import FrameConv3d, PatchEmbed3d, PatchUnembed3d, linearize
from framecast.quant.int8 import (
    HalfLinear,
    Int8Embedding,
    Int8Linear,
    dequantize,
    quantize_asymmetric,
)
from framecast.quant.plan import PlanEntry, Precision, plan_records
from framecast.quant.schedule import QuantConfig, progressive_quantize

pytestmark = pytest.mark.usefixtures("int8_compute")  # conftest: no float32 shortcut


def test_patch_convolutions_become_exactly_equivalent_linears():
    torch.manual_seed(0)
    conv = nn.Conv3d(5, 7, (2, 3, 4), stride=(2, 3, 4))
    x = torch.randn(2, 5, 4, 6, 8)
    assert torch.allclose(PatchEmbed3d.from_conv(conv)(x), conv(x), atol=1e-5)
    frame = nn.Conv3d(5, 7, (1, 3, 5), padding=(0, 1, 2))
    assert torch.allclose(FrameConv3d.from_conv(frame)(x), frame(x), atol=1e-5)
    up = nn.ConvTranspose3d(7, 3, (2, 3, 4), stride=(2, 3, 4))
    z = torch.randn(2, 7, 2, 2, 2)
    assert torch.allclose(PatchUnembed3d.from_conv(up)(z), up(z), atol=1e-5)


def test_linearize_leaves_other_convolutions_and_the_outputs_unchanged():
    torch.manual_seed(1)
    model = create("vblt", "tiny").eval()
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        before = model(video)
        replaced = linearize(model)
        after = model(video)
    assert sorted(replaced) == ["decoder.upsample", "encoder.frame_conv", "encoder.patch_conv"]
    assert torch.allclose(before, after, atol=1e-4)
    unet = create("unet3d", "tiny").eval()  # causal convolutions pad in their own forward
    assert linearize(unet) == ["up.0", "up.1"]  # only its 2x2 up-convolutions (patches)


def test_a_per_frame_convolution_in_int8_runs_its_unfolded_neighbourhoods_through_the_gemm():
    torch.manual_seed(2)
    conv = nn.Conv3d(6, 8, (1, 3, 3), padding=(0, 1, 1))
    x = torch.randn(2, 6, 3, 5, 7)
    layer = FrameConv3d.from_conv(conv)
    layer.proj = Int8Linear.from_float(layer.proj)
    with torch.no_grad():
        want, got = conv(x), layer(x)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 0.05 * want.abs().max()  # W8A8 rounding, not a wrong map


def test_roles_come_from_the_module_holding_each_linear():
    model = create("vblt", "tiny")
    linearize(model)
    roles = layer_roles(model)
    assert roles["blocks.0.mlp.fc"] == roles["decoder.blocks.0.mlp.proj"] == "mlp"
    assert roles["blocks.0.attn.out"] == roles["decoder.blocks.0.cross.out"] == "attn_out"
    assert roles["blocks.0.attn.q"] == roles["encoder.blocks.0.attn.kv"] == "qkv"
    assert roles["decoder.head"] == roles["encoder.patch_conv.proj"] == "embed_head"
    assert set(roles.values()) == {"mlp", "attn_out", "qkv", "embed_head"}


def test_asymmetric_int8_linear_is_an_integer_gemm_equal_to_its_float_reference():
    torch.manual_seed(2)
    linear = nn.Linear(40, 24)
    x = torch.rand(3, 11, 40) * 4.0 + 1.0  # one-sided activations, as after a GELU
    layer = Int8Linear.from_float(linear, asymmetric=True)
    assert layer.weight_q.dtype == torch.int8
    wq, ws, wz = quantize_asymmetric(linear.weight.detach(), dim=1)
    xq, xs, xz = quantize_asymmetric(x.reshape(-1, 40), dim=1)
    reference = F.linear(dequantize(xq, xs, xz), dequantize(wq, ws, wz), linear.bias)
    assert torch.allclose(layer(x).reshape(-1, 24), reference, atol=1e-4)
    fp32 = linear(x)
    assert (layer(x) - fp32).norm() / fp32.norm() < 0.02


def test_half_linear_stores_fp16_and_stays_close():
    linear = nn.Linear(16, 8)
    layer = HalfLinear.from_float(linear)
    assert layer.weight_h.dtype == torch.float16
    x = torch.randn(4, 16)
    assert torch.allclose(layer(x), linear(x), atol=1e-2)
    # in bf16 (the bf16 compute form) the bias is cast once and kept, not copied on each call
    xb = x.bfloat16()
    layer(xb)  # the first call widens the weight and the bias
    assert layer.widened_bias(torch.bfloat16) is layer.widened_bias(torch.bfloat16)
    assert layer.widened_bias(torch.float32) is layer.bias
    with torch.profiler.profile() as prof:
        out = layer(xb)
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), linear(x), atol=5e-2)
    assert not [e for e in prof.events() if e.name in ("aten::to", "aten::_to_copy")]


def _plan(model: nn.Module, precisions) -> list[PlanEntry]:
    names = sorted(layer_roles(model))
    pairs = zip(names, precisions, strict=False)  # precisions: an endless cycle
    return [PlanEntry(n, float(i), p) for i, (n, p) in enumerate(pairs)]


def test_a_quantized_model_saves_reloads_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(3)
    model = create("vblt", "tiny").eval()
    linearize(model)
    plan = _plan(model, itertools.cycle([Precision.INT8, Precision.INT8_ASYM, Precision.FP16]))
    quantize_model(model, plan)
    counts = precision_counts(model)
    assert counts["int8"] and counts["int8_asym"] and counts["fp16"] and "fp32" not in counts
    model_io.save_model(tmp_path, model, "vblt", extra={"quant_plan": plan_records(plan)})
    state = torch.load(tmp_path / model_io.WEIGHTS, weights_only=True)  # tensors only
    assert any(t.dtype == torch.int8 for t in state.values())
    again = model_io.load_model(tmp_path)
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(again(video), model(video))


def test_a_quantized_model_in_bf16_keeps_what_it_stores_and_computes_close_to_fp32():
    """to_bf16 on a W8A8 model: its float weights and buffers become bf16, its int8 / fp16
    weights and float32 scales stay, every quantized layer takes bf16 in and gives bf16 out,
    and its byte distributions stay close to the fp32-compute model's."""
    torch.manual_seed(5)
    model = create("vblt", "tiny", byte_skip=True, copy_prior=12.0).eval()
    linearize(model)
    plan = _plan(model, itertools.cycle([Precision.INT8, Precision.INT8_ASYM, Precision.FP16]))
    quantize_model(model, plan)
    quantized = tuple(f"{n}." for n, m in model.named_modules()
                      if isinstance(m, QUANTIZED_TYPES))
    stored = {k: (v.dtype, v.clone()) for k, v in model.state_dict().items()
              if k.startswith(quantized)}
    half = to_bf16(copy.deepcopy(model))
    for key, (dtype, value) in stored.items():  # codes, scales and fp16 weights untouched
        assert half.state_dict()[key].dtype == dtype and torch.equal(half.state_dict()[key],
                                                                     value), key
    floats = [k for k, v in half.state_dict().items() if v.is_floating_point()
              and k not in stored]
    assert floats and all(half.state_dict()[k].dtype == torch.bfloat16 for k in floats)
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    with torch.no_grad():
        want, got = model(video), half(video)
    assert got.dtype == torch.bfloat16
    p, q = want.float().log_softmax(-1), got.float().log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1).mean()
    assert kl < 0.02, kl  # nats per byte: bf16 rounding of the float work only


def test_all_int8_small_model_is_about_four_times_smaller():
    model = create("vblt", "small")
    size = state_bytes(model)
    linearize(model)
    quantize_model(model, _plan(model, itertools.repeat(Precision.INT8)))
    assert 3.5 < size / state_bytes(model) < 4.0


def _batches(videos: torch.Tensor):
    while True:
        yield from videos.split(4)


def test_progressive_schedule_falls_back_when_a_stage_costs_too_much():
    torch.manual_seed(4)
    model = create("vblt", "tiny")
    videos = torch.randint(0, 256, (8, 4, 16, 16, 1), dtype=torch.uint8)
    # A negative tolerance: every stage "costs too much", so every stage falls back.
    cfg = QuantConfig(tau_psnr_db=-100.0, max_fallbacks=2, stage_steps=1, final_steps=1,
                      calib_batches=1, tau_low_quantile=1.0, tau_high_quantile=1.0)
    logs = []
    result = progressive_quantize(model, _batches(videos), videos[:4].numpy(), cfg, logs.append)
    assert [row["stage"] for row in result.history] == ["mlp", "attn_out", "qkv", "embed_head",
                                                       "final"]
    assert all(row["fallbacks"] >= 1 for row in result.history[:-1])
    assert all(e.precision is Precision.INT8 for e in result.plan) is False
    assert sum(e.precision is not Precision.INT8 for e in result.plan) >= 4  # one per stage
    assert isinstance(result.model, VBLT)
    deployed = precision_counts(result.model)
    assert sum(deployed.values()) == len(result.plan) and "fp32" not in deployed
    assert any("fall-back" in line for line in logs)


def test_schedule_without_fallbacks_keeps_the_thresholds_plan():
    torch.manual_seed(5)
    model = create("vblt", "tiny")
    videos = torch.randint(0, 256, (8, 4, 16, 16, 1), dtype=torch.uint8)
    cfg = QuantConfig(tau_psnr_db=100.0, stage_steps=1, final_steps=0, calib_batches=1,
                      tau_low=0.0, tau_high=1e9)  # S > 0 everywhere: all int8 asymmetric
    result = progressive_quantize(model, _batches(videos), videos[:4].numpy(), cfg, lambda _: 0)
    assert {e.precision for e in result.plan} == {Precision.INT8_ASYM}
    assert result.thresholds == (0.0, 1e9)


@pytest.mark.parametrize("kwargs, message", [
    ({"tau_low": 2.0, "tau_high": 1.0}, "tau_low=2.0 must not exceed tau_high=1.0"),
    ({"tau_low_quantile": 0.9, "tau_high_quantile": 0.5}, "quantiles must satisfy"),
    ({"calib_batches": 0}, "calib_batches must be >= 1")])
def test_bad_schedule_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantConfig(**kwargs)


def test_patch_layers_on_float_weights_run_as_convolutions_equal_to_their_gemm_form():
    # The convolution shortcut (float weights) and the GEMM form (int8 layers, fake-quantized
    # fine-tuning) must agree, including a transposed patch's per-position bias.
    class GemmOnly(nn.Linear):  # not exactly nn.Linear: takes the GEMM form
        pass

    torch.manual_seed(4)
    for kind, shape in ((PatchEmbed3d, (2, 3, 4, 8, 8)), (PatchUnembed3d, (2, 5, 2, 2, 2))):
        layer = kind(shape[1], 6, (2, 4, 4)) if kind is PatchEmbed3d else kind(5, 3, (2, 4, 4))
        with torch.no_grad():
            layer.proj.bias.normal_()  # per-position biases: not one per channel
        x = torch.randn(*shape)
        # channels-last input too: the convolution then writes channels-last output, which
        # the per-position bias must be added to as well (a tile in the output's layout)
        conv = [layer(x), layer(x.contiguous(memory_format=torch.channels_last_3d))]
        gemm_proj = GemmOnly(layer.proj.in_features, layer.proj.out_features)
        gemm_proj.load_state_dict(layer.proj.state_dict())
        layer.proj = gemm_proj
        for got in conv:
            assert torch.allclose(got, layer(x), atol=1e-5), kind.__name__


@pytest.mark.parametrize("kind", ["frame", "embed", "unembed"])
@pytest.mark.parametrize("fastest", ["int8", "fp32_from_int8"])
def test_an_int8_convolution_chooses_its_form_by_timing_the_whole_convolution(kind, fastest,
                                                                               monkeypatch):
    """A W8A8 layer inside a per-frame convolution's GEMM form is timed as that convolution
    (im2col in its int8 form, a direct convolution in its float one), filed apart from a bare
    linear of its shape, and computes in the form that measured fastest; a patch layer's is
    timed as its bare linear."""
    from framecast.quant import kernels

    torch.manual_seed(5)
    if kind == "frame":
        conv, x = nn.Conv3d(4, 6, (1, 3, 3), padding=(0, 1, 1)), torch.randn(1, 4, 2, 8, 8)
    elif kind == "embed":
        conv, x = nn.Conv3d(4, 6, (2, 4, 4), stride=(2, 4, 4)), torch.randn(1, 4, 2, 8, 8)
    else:
        conv, x = nn.ConvTranspose3d(4, 6, (2, 4, 4), stride=(2, 4, 4)), torch.randn(1, 4, 1, 2, 2)
    holder = nn.Sequential(conv)
    linearize(holder)
    layer = holder[0]
    layer.proj = Int8Linear.from_float(layer.proj)
    name = type(layer).__name__
    if kind == "frame":  # the real measure: ms for every form asked, of the whole convolution
        ms = layer.measure(64, layer.proj.in_features, layer.proj.out_features, False,
                           torch.float32, ("int8", kernels.FLOAT))
        assert set(ms) == {"int8", kernels.FLOAT} and all(t > 0 for t in ms.values())
    calls = []

    def rigged(rows, k, n, asymmetric, dtype, forms):
        calls.append((rows, k, n))
        return {form: 1.0 if form == fastest else 10.0 for form in forms}
    # the patch layers have no whole-convolution timing: one planted must stay unused
    monkeypatch.setattr(type(layer), "measure", lambda self, *a: rigged(*a), raising=False)
    kernels.reset_choices()
    # this module's tests compute in int8 (conftest); the chooser is what this one tests
    with torch.no_grad(), kernels.choose(fused_quant=kernels.CHOICE.fused_quant):
        want = conv(x)
        gemm = layer._gemm(x)  # the int8 product over the layout
        got = layer(x)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    keys = kernels.choices()["layer_ms"]
    kernels.reset_choices()
    if kind != "frame":  # the patch layers are timed as the bare linear of their shape
        assert calls == [] and not any(":" in key for key in keys)
        return
    assert len(calls) == 1
    assert any(key.startswith(f"{name}:") for key in keys)
    assert set(layer.proj.chosen_forms().values()) == {fastest}
    torch.testing.assert_close(got, gemm if fastest == "int8" else layer._float(
        x, layer.proj.widened_weight(torch.float32)))


def test_int8_embedding_rows_stay_within_half_a_scale_and_are_near_four_times_smaller():
    torch.manual_seed(0)
    table = nn.Embedding(300, 64)
    quant = Int8Embedding.from_float(table)
    index = torch.randint(0, 300, (5, 7))
    error = (quant(index) - table(index)).abs()
    assert (error <= quant.row_scale[index] / 2 + 1e-7).all()
    assert torch.allclose(quant.weight[index], quant(index))
    # One byte per value and a float scale per row: 4 x 64 / (64 + 4).
    assert state_bytes(table) / state_bytes(quant) == pytest.approx(4 * 64 / 68)


def test_deployment_stores_the_models_tables_as_int8_and_old_float_tables_still_load(tmp_path):
    torch.manual_seed(3)
    model = create("vblt", "tiny", byte_skip=True, copy_prior=12.0).eval()
    linearize(model)
    plan = _plan(model, itertools.repeat(Precision.INT8))
    quantize_model(model, plan)
    tables = [n for n, m in model.named_modules() if isinstance(m, Int8Embedding)]
    assert set(tables) == {"encoder.byte_embed", "decoder.copy"}
    assert not any(isinstance(m, nn.Embedding) for m in model.modules())
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    # A model quantized before tables were int8 kept them in float: it must still load.
    for name in tables:
        float_table = nn.Embedding(*model.get_submodule(name).codes.shape)
        float_table.weight.data.copy_(model.get_submodule(name).weight)
        replace_layers(model, [name], lambda _, __, t=float_table: t)
    model_io.save_model(tmp_path, model, "vblt", extra={"quant_plan": plan_records(plan)})
    again = model_io.load_model(tmp_path)
    assert isinstance(again.get_submodule("decoder.copy"), nn.Embedding)
    with torch.no_grad():
        assert torch.equal(again(video), model(video))


def test_per_frame_convolutions_quantize_and_models_saved_before_that_still_load(tmp_path):
    """Pixel convolutions are int8 linears over unfolded neighbourhoods in new quantized models;
    one quantized before (its per-frame convolutions saved as float Conv3d) loads as it was."""
    from framecast.quant.apply import to_deployed, to_training

    torch.manual_seed(5)
    video = torch.randint(0, 256, (2, 4, 16, 16, 1), dtype=torch.uint8)
    for old in (False, True):
        model = create("vblt", "tiny", encoder_convs=1, decoder_convs=1).eval()
        linearize(model, frame_convs=(lambda _: False) if old else None)
        plan = _plan(model, itertools.repeat(Precision.INT8))
        to_training(model, plan)
        to_deployed(model)
        convs = [n for n, m in model.named_modules() if isinstance(m, FrameConv3d)]
        assert len(convs) == (0 if old else 5)  # frame conv, 2 per block, 2 blocks
        assert all(isinstance(model.get_submodule(f"{n}.proj"), Int8Linear) for n in convs)
        folder = tmp_path / str(old)
        model_io.save_model(folder, model, "vblt", extra={"quant_plan": plan_records(plan)})
        again = model_io.load_model(folder)
        with torch.no_grad():
            assert torch.equal(again(video), model(video))
