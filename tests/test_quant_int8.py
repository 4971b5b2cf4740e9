"""int8 quantizers and the W8A8 linear layer."""

import pytest
import torch
from torch import nn

from framecast.quant.int8 import (
    Int8Linear,
    dequantize,
    quantize_asymmetric,
    quantize_symmetric,
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
