"""Learnable scales with the straight-through estimator."""

import pytest
import torch
from torch import nn

from framecast.quant import kernels
from framecast.quant.int8 import quantize_symmetric
from framecast.quant.learnable import QATLinear, fake_quantize, round_ste, weight_scale
from framecast.quant.maths import clip_range
from framecast.quant.plan import Precision

pytestmark = pytest.mark.usefixtures("int8_compute")  # conftest: no float32 shortcut


def test_round_ste_rounds_forward_and_passes_gradients_through():
    x = torch.tensor([0.4, 1.6, -2.5], requires_grad=True)
    y = round_ste(x)
    assert y.tolist() == [0.0, 2.0, -2.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


def test_beta_zero_gives_the_max_scale_of_the_int8_quantizer():
    w = torch.randn(16, 32)
    _, max_scale = quantize_symmetric(w, dim=1)
    assert torch.allclose(weight_scale(w, torch.zeros(())), max_scale)


def test_fake_quantization_error_is_at_most_half_a_step():
    w = torch.randn(8, 40)
    scale = weight_scale(w, torch.zeros(()))
    assert ((fake_quantize(w, clip_range(w)) - w).abs() <= scale / 2 + 1e-7).all()


def test_beta_and_delta_receive_gradients_and_a_calibration_step_moves_them():
    torch.manual_seed(0)
    layer = QATLinear(nn.Linear(32, 16))
    x = torch.nn.functional.layer_norm(torch.randn(64, 32), (32,))
    target = torch.randn(64, 16)
    loss = ((layer(x) - target) ** 2).mean() + 1e-3 * layer.scale_penalty()
    loss.backward()
    assert layer.beta.grad is not None and layer.beta.grad != 0
    assert layer.delta.grad is not None and layer.delta.grad != 0
    before = (layer.beta.item(), layer.delta.item())
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert (layer.beta.item(), layer.delta.item()) != before


def test_to_int8_keeps_the_learned_weight_scales():
    torch.manual_seed(1)
    layer = QATLinear(nn.Linear(24, 8))
    with torch.no_grad():
        layer.beta.fill_(-0.5)  # a learned, tighter clipping range
    int8 = layer.to_int8()
    assert int8.weight_q.dtype == torch.int8
    expected = weight_scale(layer.weight, layer.beta).squeeze(1)
    assert torch.allclose(int8.weight_scale, expected)
    assert torch.equal(int8.dequantized_weight(),
                       fake_quantize(layer.weight, clip_range(layer.weight, layer.beta)))


def test_the_asymmetric_fake_quant_passes_gradients_to_weights_and_inputs():
    torch.manual_seed(2)
    layer = QATLinear(nn.Linear(16, 8), Precision.INT8_ASYM)
    x = torch.randn(5, 16, requires_grad=True)
    layer(x).square().sum().backward()
    assert layer.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


@pytest.mark.parametrize("path", ["int_mm", "onednn_u7"])
def test_activation_codes_take_the_width_of_the_deployed_gemm_path(path):
    if not kernels.PATHS[path].available(torch.device("cpu")):
        pytest.skip(f"{path} is not available here")
    identity = nn.Linear(64, 64, bias=False)
    with torch.no_grad():
        identity.weight.copy_(torch.eye(64))  # fake-quantizes to itself: y = the fake-quant x
    layer = QATLinear(identity)
    x = torch.randn(2, 16, 64)
    with kernels.choose(fused_quant=False, path=path):
        bits = layer.activation_bits(32)
        y = layer(x).detach()
        assert QATLinear(identity, act_bits=8).activation_bits(32) == 8
    assert bits == kernels.PATHS[path].act_bits
    qmax = 2 ** (bits - 1) - 1
    codes = y * qmax / x.abs().amax(dim=-1, keepdim=True)
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.abs().amax() == pytest.approx(qmax)
