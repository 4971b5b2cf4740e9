"""The mixed-precision plan: each weight matrix's precision from its sensitivity and thresholds.

VQ-ViT: S <= tau_low -> int8 symmetric; tau_low < S <= tau_high -> int8 asymmetric;
S > tau_high -> 16-bit. The plan is a readable artifact (layer, S, precision).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import StrEnum


class Precision(StrEnum):
    INT8 = "int8"  # symmetric, per output channel
    INT8_ASYM = "int8_asym"  # asymmetric (scale + zero point)
    FP16 = "fp16"  # kept in 16-bit


@dataclass(frozen=True)
class PlanEntry:
    layer: str
    sensitivity: float
    precision: Precision


def precision_for(sensitivity: float, tau_low: float, tau_high: float) -> Precision:
    if sensitivity <= tau_low:
        return Precision.INT8
    if sensitivity <= tau_high:
        return Precision.INT8_ASYM
    return Precision.FP16


def precision_plan(sensitivities: dict[str, float], tau_low: float, tau_high: float
                   ) -> list[PlanEntry]:
    """One entry per layer, most sensitive first."""
    if not 0 <= tau_low <= tau_high:
        raise ValueError(f"thresholds must satisfy 0 <= tau_low <= tau_high, got "
                         f"tau_low={tau_low}, tau_high={tau_high}")
    entries = [PlanEntry(name, s, precision_for(s, tau_low, tau_high))
               for name, s in sensitivities.items()]
    return sorted(entries, key=lambda e: -e.sensitivity)


def plan_records(plan: list[PlanEntry], forms: dict[str, dict[str, str]] | None = None
                 ) -> list[dict]:
    """JSON-ready rows {layer, sensitivity, precision}, with `forms` where given: the compute
    forms each W8A8 layer chose on the machine that ran it ({'<tokens>@<dtype>': form},
    `compute_form.layer_forms`)."""
    forms = forms or {}
    return [{**asdict(e), "precision": e.precision.value,
             **({"forms": forms[e.layer]} if e.layer in forms else {})} for e in plan]


def plan_from_records(records: list[dict]) -> list[PlanEntry]:
    return [PlanEntry(e["layer"], float(e["sensitivity"]), Precision(e["precision"]))
            for e in records]


def plan_to_json(plan: list[PlanEntry]) -> str:
    return json.dumps(plan_records(plan), indent=1)


def plan_from_json(text: str) -> list[PlanEntry]:
    return plan_from_records(json.loads(text))


def format_plan(plan: list[PlanEntry], forms: dict[str, dict[str, str]] | None = None) -> str:
    """The plan as a table; with `forms`, a column of each layer's chosen compute forms."""
    forms = forms or {}
    width = max((len(e.layer) for e in plan), default=5)
    head = f"{'layer':<{width}}  {'S':>10}  {'precision':<9}"
    lines = [head + ("  computes" if forms else "")]
    lines += [(f"{e.layer:<{width}}  {e.sensitivity:10.4g}  {e.precision.value:<9}"
               + ("  " + ", ".join(f"{k} {v}" for k, v in forms.get(e.layer, {}).items())
                  if forms else "")).rstrip() for e in plan]
    return "\n".join(lines)
