"""Parity per precision: a fine-tuned fake-quant layer (QATLinear) and its deployed form
(`to_deployed()`) compute the same output, as both take scales, zero points and codes from
`quant.maths`.

Tolerances. int8 (both kinds): equal integer codes make both outputs the same integer
accumulator times s_x * s_w (per token, per output channel); only float32 rounding is left
(under 0.05 of that unit at K = 64: the fake path sums float products, the deployed one rescales
an exact int32 sum), so the bound is a quarter unit. A single changed activation code moves the
accumulator by |w_q - z_w| whole units, so it cannot hide in the bound. fp16: the same float32
operands into the same GEMM; 1e-6 of sum|x||w| leaves room for a summation order, while fp16
rounding of the weights (2^-11 relative) is far above it.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from framecast.quant import kernels
from framecast.quant.int8 import Int8Linear, quantize_asymmetric, quantize_tokens
from framecast.quant.learnable import QATLinear
from framecast.quant.maths import symmetric_qmax
from framecast.quant.plan import Precision

pytestmark = pytest.mark.usefixtures("int8_compute")  # conftest: no float32 shortcut

K, N = 64, 48
UNITS = 0.25  # int8 tolerance, in units s_x * s_w of the integer accumulator
FP16_RTOL = 1e-6  # fp16 tolerance, relative to sum_k |x_k| |w_k|


def _tokens(seed: int) -> torch.Tensor:
    """(2, 32, K) LayerNorm outputs with the cases a scale has to survive: a one-feature outlier,
    a loud token, an all-zero token and a one-sided (post-GELU-like) token."""
    gen = torch.Generator().manual_seed(seed)
    x = F.layer_norm(torch.randn(2, 32, K, generator=gen), (K,))
    x[0, 5, 7] = 40.0
    x[1, 9] *= 20.0
    x[1, 20] = 0.0
    x[0, 10] = x[0, 10].abs() + 1.0
    return x


def _fine_tuned(precision: Precision, act_bits: int | None = None) -> QATLinear:
    """A QATLinear after a short calibration fine-tune from learned-looking clipping (beta, delta
    < 0: ranges tighter than max|.|, so outliers are clipped): weights, beta and delta all move."""
    torch.manual_seed(0)
    layer = QATLinear(nn.Linear(K, N), precision, act_bits)
    with torch.no_grad():
        layer.beta.fill_(-0.3)
        layer.delta.fill_(-0.5)
    start = {name: p.detach().clone() for name, p in layer.named_parameters()}
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for step in range(3):
        x = _tokens(step + 1)
        loss = (layer(x) - x[..., :N]).square().mean() + 1e-4 * layer.scale_penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = ["weight", "bias", "beta", "delta"] if precision is Precision.INT8 \
        else ["weight", "bias"]  # beta and delta scale the symmetric codes only
    assert all(not torch.equal(start[n], getattr(layer, n)) for n in trained)
    return layer


def _token_scale(layer: QATLinear, x: torch.Tensor, bits: int) -> torch.Tensor:
    """(tokens, 1) activation scales s_x of the deployed int8 layer."""
    x2 = x.reshape(-1, K)
    if layer.precision is Precision.INT8:
        return quantize_tokens(x2, layer.delta.detach(), symmetric_qmax(bits))[1]
    return quantize_asymmetric(x2, 1, bits)[1]


def _tolerance(layer: QATLinear, deployed: nn.Module, x: torch.Tensor, bits: int
               ) -> torch.Tensor:
    """(tokens, N) allowed |deployed - fake| (see the module docstring)."""
    if layer.precision is Precision.FP16:
        return FP16_RTOL * (x.reshape(-1, K).abs() @ layer.weight.detach().abs().T)
    return UNITS * _token_scale(layer, x, bits) * deployed.weight_scale


def _excess(y_deployed: torch.Tensor, y_fake: torch.Tensor, tol: torch.Tensor) -> torch.Tensor:
    """|deployed - fake| / tolerance per output: parity where every value is <= 1."""
    err = (y_deployed - y_fake).detach().reshape(-1, N).abs()
    return err / tol.clamp_min(1e-30)


def _outputs(layer: QATLinear, deployed: nn.Module, x: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return layer(x), deployed(x)


@pytest.mark.parametrize("path", ["int_mm", "onednn_u7"])
@pytest.mark.parametrize("precision", list(Precision))
def test_a_fine_tuned_layer_and_its_deployed_form_agree(precision, path):
    if not kernels.PATHS[path].available(torch.device("cpu")):
        pytest.skip(f"{path} is not available here")
    bits = kernels.PATHS[path].act_bits  # 8, or 7 for onednn_u7
    # Eager quantizer: the same float ops as the fake path, so the very same codes.
    x = _tokens(100)
    with kernels.choose(fused_quant=False, path=path):
        layer = _fine_tuned(precision)
        deployed = layer.to_deployed()
        y_fake, y_deployed = _outputs(layer, deployed, x)
        assert layer.activation_bits(64) == bits
    excess = _excess(y_deployed, y_fake, _tolerance(layer, deployed, x, bits))
    assert excess.max() <= 1.0, f"worst output at {excess.max():.3g} x the tolerance"


@pytest.mark.parametrize("precision", [Precision.INT8, Precision.INT8_ASYM])
def test_the_tolerance_catches_fake_codes_of_the_wrong_width(precision):
    """The known trap: fake codes of one width against a deployed GEMM path taking the other."""
    x = _tokens(100)
    with kernels.choose(fused_quant=False, path="int_mm"):  # 8-bit activation codes
        layer = _fine_tuned(precision, act_bits=7)
        deployed = layer.to_deployed()
        y_fake, y_deployed = _outputs(layer, deployed, x)
    assert _excess(y_deployed, y_fake, _tolerance(layer, deployed, x, 8)).max() > 10


def test_the_tolerance_catches_a_deployed_layer_that_drops_the_learned_delta():
    with kernels.choose(fused_quant=False, path="int_mm"):
        layer = _fine_tuned(Precision.INT8)
        deployed = layer.to_deployed()
        assert isinstance(deployed, Int8Linear)
        deployed.act_delta.zero_()
        deployed.refresh()  # plain max scaling of the tokens
        x = _tokens(100)
        y_fake, y_deployed = _outputs(layer, deployed, x)
    assert _excess(y_deployed, y_fake, _tolerance(layer, deployed, x, 8)).max() > 10


def test_the_fp16_tolerance_catches_unrounded_weights():
    with kernels.choose(fused_quant=False, path="int_mm"):
        layer = _fine_tuned(Precision.FP16)
    x = _tokens(100)
    y_fake, y_float = _outputs(layer, layer.as_linear(), x)
    assert _excess(y_float, y_fake, _tolerance(layer, layer.to_deployed(), x, 8)).max() > 10


@pytest.mark.parametrize("precision", [Precision.INT8, Precision.INT8_ASYM])
def test_parity_holds_with_the_default_kernels(precision):
    """As deployed: the compiled quantizer and the GEMM path measured here (7-bit codes where
    this CPU's choice takes them: the fake path asks the same chooser). The compiled row std may
    differ from the eager one in its last bit and move a value sitting on a rounding tie by one
    code: allowed on at most 1% of the outputs, each within one code of the largest weight."""
    layer = _fine_tuned(precision)
    deployed = layer.to_deployed()
    x = _tokens(100)
    y_fake, y_deployed = _outputs(layer, deployed, x)
    bits = kernels.gemm_path(64, K, N, torch.device("cpu")).act_bits
    assert layer.activation_bits(64) == bits
    tol = _tolerance(layer, deployed, x, bits)
    excess = _excess(y_deployed, y_fake, tol)
    assert (excess > 1.0).float().mean() <= 0.01
    one_code = _token_scale(layer, x, bits) * deployed.dequantized_weight().abs().amax(dim=1)
    assert _excess(y_deployed, y_fake, tol + one_code).max() <= 1.0
