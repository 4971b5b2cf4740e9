"""Sensitivity S(W) and the threshold plan."""

import pytest
import torch
from torch import nn

from framecast.quant.plan import (
    Precision,
    format_plan,
    plan_from_json,
    plan_from_records,
    plan_records,
    plan_to_json,
    precision_for,
    precision_plan,
)
from framecast.quant.sensitivity import spectral_ratio, weight_sensitivity


class TwoBranches(nn.Module):
    """`used` feeds the loss; `unused` never does, so its gradient is zero."""

    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)

    def forward(self, x):
        return self.used(x)


def test_a_layer_with_large_gradients_ranks_above_one_with_none():
    torch.manual_seed(0)
    model = TwoBranches()
    batches = [torch.randn(4, 8) for _ in range(3)]
    s = weight_sensitivity(model, batches, lambda m, x: (m(x) ** 2).sum())
    assert s["used"] > 0 and s["unused"] == 0
    assert precision_plan(s, 0.0, 0.0)[0].layer == "used"


def test_sensitivity_scales_with_the_gradient_norm():
    torch.manual_seed(0)
    model = TwoBranches()
    batches = [torch.randn(4, 8)]
    small = weight_sensitivity(model, batches, lambda m, x: m(x).sum())["used"]
    large = weight_sensitivity(model, batches, lambda m, x: 10 * m(x).sum())["used"]
    assert large == pytest.approx(10 * small, rel=1e-5)


def test_spectral_ratio_is_one_for_rank_one_and_small_for_spread_spectra():
    assert spectral_ratio(torch.outer(torch.randn(6), torch.randn(5))) == pytest.approx(1.0)
    assert spectral_ratio(torch.eye(16)) == pytest.approx(0.25)  # 1 / sqrt(16)


@pytest.mark.parametrize("s, precision", [
    (0.0, Precision.INT8), (1.0, Precision.INT8),  # S <= tau_low
    (1.0001, Precision.INT8_ASYM), (3.0, Precision.INT8_ASYM),  # tau_low < S <= tau_high
    (3.0001, Precision.FP16), (50.0, Precision.FP16),  # S > tau_high
])
def test_thresholds_route_layers_as_the_formula_says(s, precision):
    assert precision_for(s, tau_low=1.0, tau_high=3.0) is precision


def test_plan_is_sorted_readable_and_round_trips():
    plan = precision_plan({"a": 0.5, "b": 5.0, "c": 2.0}, 1.0, 3.0)
    assert [(e.layer, e.precision) for e in plan] == [
        ("b", Precision.FP16), ("c", Precision.INT8_ASYM), ("a", Precision.INT8)]
    assert plan_from_json(plan_to_json(plan)) == plan
    assert "int8_asym" in format_plan(plan)


def test_the_saved_plan_shows_each_layers_chosen_forms_and_still_loads():
    plan = precision_plan({"a": 0.5, "b": 5.0}, 1.0, 3.0)
    forms = {"a": {"16@float32": "int8", "512@bfloat16": "bf16_from_int8"}}
    records = plan_records(plan, forms)
    assert records[1]["forms"] == forms["a"] and "forms" not in records[0]  # b: fp16
    assert plan_from_records(records) == plan
    table = format_plan(plan, forms).splitlines()
    assert table[0].endswith("computes")
    assert table[2].endswith("16@float32 int8, 512@bfloat16 bf16_from_int8")


def test_inverted_thresholds_are_refused():
    with pytest.raises(ValueError, match="tau_low <= tau_high"):
        precision_plan({"a": 1.0}, 3.0, 1.0)
