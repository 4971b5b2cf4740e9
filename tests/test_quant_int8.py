"""int8 quantizers and the W8A8 linear layer."""

import copy
import pickle

import pytest
import torch
from torch import nn

from framecast.quant import int8 as int8_module
from framecast.quant import kernels
from framecast.quant.int8 import (
    Int8Linear,
    dequantize,
    quantize_asymmetric,
    quantize_symmetric,
    quantize_tokens,
    reference_w8a8,
)


def test_per_channel_round_trip_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(64, 48) * torch.logspace(-2, 1, 64)[:, None]  # rows of very different range
    q, scale = quantize_symmetric(w, dim=1)
    assert q.dtype == torch.int8 and scale.shape == (64, 1)
    assert ((w - dequantize(q, scale)).abs() <= scale / 2 + 1e-7).all()
    assert q.abs().max() == 127  # each row uses the full range


def test_per_token_scales_follow_each_token():
    x = torch.tensor([[0.1, -0.2, 0.05], [100.0, 3.0, -50.0]])
    q, scale = quantize_symmetric(x, dim=1)
    assert torch.allclose(scale.squeeze(1), torch.tensor([0.2, 100.0]) / 127)
    assert ((x - dequantize(q, scale)).abs() <= scale / 2 + 1e-7).all()


def test_asymmetric_round_trip_error_is_at_most_half_a_step_on_skewed_data():
    torch.manual_seed(1)
    x = torch.rand(8, 100) * 5.0 + 0.5  # all positive: symmetric would waste half the codes
    q, scale, zero = quantize_asymmetric(x, dim=1)
    assert ((x - dequantize(q, scale, zero)).abs() <= scale / 2 + 1e-6).all()
    _, sym_scale = quantize_symmetric(x, dim=1)
    assert (scale < sym_scale).all()  # finer steps than symmetric on one-sided data


def test_int8_linear_equals_its_float_reference_and_is_close_to_fp32():
    torch.manual_seed(2)
    linear = nn.Linear(96, 48)
    x = torch.randn(3, 17, 96)
    layer = Int8Linear.from_float(linear)
    y = layer(x)
    assert y.shape == (3, 17, 48)
    assert torch.allclose(y, reference_w8a8(linear, x), atol=1e-4)  # same arithmetic, exact ints
    fp32 = linear(x)
    assert (y - fp32).norm() / fp32.norm() < 0.02


def test_int8_linear_stores_int8_weights_and_round_trips_its_state(tmp_path):
    layer = Int8Linear.from_float(nn.Linear(32, 16))
    assert layer.weight_q.dtype == torch.int8
    assert list(layer.parameters()) == []  # int8 buffers only: nothing float left to train
    torch.save(layer.state_dict(), tmp_path / "q.pt")
    again = Int8Linear(32, 16)
    again.load_state_dict(torch.load(tmp_path / "q.pt", weights_only=True))
    x = torch.randn(5, 32)
    assert torch.equal(layer(x), again(x))
    size_fp32 = 32 * 16 * 4
    assert layer.weight_q.numel() * layer.weight_q.element_size() == size_fp32 // 4


@pytest.mark.parametrize("bias", [True, False])
def test_single_token_and_no_bias(bias):
    linear = nn.Linear(24, 12, bias=bias)
    x = torch.randn(1, 24)
    assert torch.allclose(Int8Linear.from_float(linear)(x), reference_w8a8(linear, x), atol=1e-4)


needs_onednn = pytest.mark.skipif(not kernels.onednn_int8_available(),
                                  reason="oneDNN int8 needs an x86 CPU with VNNI")


@needs_onednn
def test_onednn_int8_gemm_equals_int_mm_exactly_on_full_range_int8():
    torch.manual_seed(3)
    xq = torch.randint(-128, 128, (300, 200), dtype=torch.int8)
    wq = torch.randint(-128, 128, (72, 200), dtype=torch.int8)
    xq[0], wq[0] = -128, -128  # the extreme products: saturating int16 pairs would show here
    scale = torch.rand(72) + 0.5
    onednn = kernels.int8_matmul_scaled(xq, wq, scale, kernels.pack_int8(wq))
    int_mm = kernels.int8_matmul_scaled(xq, wq, scale, None)
    exact = (xq.double() @ wq.double().t()) * scale.double()
    assert torch.equal(onednn, int_mm)
    assert torch.allclose(onednn.double(), exact, rtol=1e-6)


@pytest.mark.parametrize("tokens", [1, 7, 513])
def test_fused_quantizer_gives_the_eager_quantizer_s_codes(tokens):
    torch.manual_seed(tokens)
    x = torch.randn(tokens, 96) * torch.logspace(-1, 1, 96)
    q_eager, s_eager = quantize_tokens(x)
    q_fused, s_fused = int8_module._quantize_tokens_fused(x, None)
    assert torch.equal(q_fused, q_eager) and torch.equal(s_fused, s_eager)
    # With a learned delta the row std is a float reduction whose order differs: the scale may
    # move in its last bit, and a value sitting on a rounding tie may move by one code.
    delta = torch.tensor(0.7)
    q_eager, s_eager = quantize_tokens(x, delta)
    q_fused, s_fused = int8_module._quantize_tokens_fused(x, delta)
    assert torch.allclose(s_fused, s_eager, rtol=1e-6)
    changed = q_fused.int() - q_eager.int()
    assert changed.abs().max() <= 1 and (changed != 0).float().mean() < 1e-3


def test_fused_falls_back_to_eager_ops_when_compiling_fails(monkeypatch, caplog):
    def broken_compile(fn, **_):
        def run(*args):
            raise RuntimeError("no C++ compiler")
        return run
    monkeypatch.setattr(torch, "compile", broken_compile)
    double = kernels.fused(lambda x: x * 2)
    with caplog.at_level("WARNING"):
        assert torch.equal(double(torch.ones(3)), torch.full((3,), 2.0))
        assert torch.equal(double(torch.ones(2)), torch.full((2,), 2.0))
    assert sum("eager ops" in r.message for r in caplog.records) == 1  # said once


@pytest.mark.parametrize("asymmetric", [False, True])
def test_a_used_int8_linear_copies_pickles_and_moves_with_identical_outputs(asymmetric):
    torch.manual_seed(4)
    layer = Int8Linear.from_float(nn.Linear(48, 40), asymmetric=asymmetric)
    x = torch.randn(9, 48)
    y = layer(x)  # builds the kernel's packed weight (an opaque tensor on oneDNN)
    assert torch.equal(copy.deepcopy(layer)(x), y)
    assert torch.equal(pickle.loads(pickle.dumps(layer))(x), y)
    assert torch.equal(layer.to(torch.device("cpu"))(x), y)
    assert (layer._packed is not None) == kernels.use_onednn(x.device)
