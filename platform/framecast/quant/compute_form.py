"""The compute form a model is deployed in: float32, or bf16 where the device computes bf16
natively, chosen by measurement.

A float model in bf16 is every weight and activation 16-bit (`apply.to_bf16`). A quantized model
in bf16 keeps what it stores (int8 and fp16 weights, float32 scales) and runs the rest of its
compute (attention, norms, activations, the per-pixel decoder) in bf16; each W8A8 layer then
takes bf16 inputs and picks its own fastest form (`kernels.layer_mode`). On an AVX-512 bf16 CPU
that is what makes a W8A8 model as fast as the bf16 float model: int8 linears alone cannot
speed up the attention and elementwise work that bf16 halves (benchmarks/RESULTS.md, quantize).

`available` never offers bf16 where it would be an emulation; `candidates` adds the quality
rule for quantized models (their bf16 form was scored by jobs.quantize: PSNR within the
schedule's tau_psnr_db of fp32); `fastest` times the candidates side by side.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from framecast.quant import kernels
from framecast.quant.apply import to_bf16
from framecast.quant.int8 import Int8Linear

FORMS = ("fp32", "bf16")
ASKED = ("auto", *FORMS)


def available(device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The compute forms `device` runs natively: fp32, and bf16 where it is native."""
    return FORMS if kernels.native_16bit(torch.bfloat16, device) else FORMS[:1]


def bf16_allowed(meta: dict) -> bool:
    """Whether a logged model's bf16 form passed its quality check: always for float models
    (bf16 is their own weights rounded; benchmarks/quantize.py scores it), for a quantized one
    only where jobs.quantize measured its bf16 form within its PSNR limit."""
    if meta.get("precision", "fp32") == "fp32":
        return True
    return bool(meta.get("bf16_compute", {}).get("allowed", False))


def candidates(asked: str, meta: dict, device: torch.device | str = "cpu") -> tuple[str, ...]:
    """The forms to consider for `asked` (auto, fp32 or bf16). Raises ValueError, one line,
    for bf16 asked where it is not native."""
    if asked not in ASKED:
        raise ValueError(f"precision {asked!r}: expected one of {', '.join(ASKED)}")
    if asked == "bf16" and "bf16" not in available(device):
        raise ValueError("precision bf16 refused: this CPU has no native bf16 (no amx_bf16 / "
                         "avx512_bf16 in its flags), where it would run slower than fp32")
    if asked != "auto":
        return (asked,)
    return tuple(f for f in available(device) if f == "fp32" or bf16_allowed(meta))


def layer_forms(model: nn.Module) -> dict[str, dict[str, str]]:
    """{W8A8 layer name: {'<token class>@<input dtype>': form}}: what each layer chose on this
    machine for the token counts it has met. A layer chooses the first time it meets a token
    class (`Int8Linear.compute_form`), so run the workload first (`choose_layer_forms`)."""
    return {name: m.chosen_forms() for name, m in model.named_modules()
            if isinstance(m, Int8Linear) and m.forms}


def kept_layer_forms(models: Iterable[nn.Module]) -> dict[str, dict[str, str]]:
    """`layer_forms` over several compute forms of one model (the forms kept per batch size):
    each layer's keys name their input dtype, so the forms' choices sit side by side."""
    out: dict[str, dict[str, str]] = {}
    for model in models:
        for name, forms in layer_forms(model).items():
            out.setdefault(name, {}).update(forms)
    return out


def choose_layer_forms(model: nn.Module, workload: Callable[[nn.Module, int], object],
                       batches: Iterable[int]) -> dict[str, dict[str, str]]:
    """The explicit step that fixes every W8A8 layer's compute form: `workload(model, batch)`
    at each batch size makes each layer measure and keep its form for the token classes it
    will meet (warm-up before serving or timing). Returns `layer_forms(model)`."""
    with torch.inference_mode():
        for batch in batches:
            workload(model, batch)
    return layer_forms(model)


def in_form(model: nn.Module, form: str, copy_model: bool = True) -> nn.Module:
    """`model` (a copy unless `copy_model=False`) computing in `form`."""
    out = copy.deepcopy(model) if copy_model else model
    return to_bf16(out) if form == "bf16" else out


def in_forms(model: nn.Module, forms: Iterable[str]) -> dict[str, nn.Module]:
    """`model` in each of `forms`: the model itself for fp32, a bf16 copy where fp32 is a form
    too (else `model` converted in place)."""
    forms = tuple(forms)
    return {f: in_form(model, f, copy_model="fp32" in forms) if f != "fp32" else model
            for f in forms}


@dataclass
class Choice:
    """The forms kept and why: ms per form and batch size, timed side by side; the fastest form
    at each timed batch size (`by_batch`: a form can win at batch 1 and lose at a full batch);
    `chosen`, the form at the largest one (what a loaded replica mostly runs)."""
    chosen: str
    ms: dict[str, dict[int, float]] = field(default_factory=dict)
    by_batch: dict[int, str] = field(default_factory=dict)

    def form_for(self, batch: int) -> str:
        """The form a batch of `batch` computes in: that of the smallest timed batch size at
        least as large (a batch of 3 rides with 4), the largest one's beyond them."""
        for timed in sorted(self.by_batch):
            if batch <= timed:
                return self.by_batch[timed]
        return self.chosen

    def forms(self) -> tuple[str, ...]:
        """The forms some batch size computes in: the models to keep."""
        return tuple(dict.fromkeys([self.chosen, *self.by_batch.values()]))

    def why(self) -> str:
        if len(self.ms) < 2:
            return f"{self.chosen}: the only form considered"
        parts = ", ".join(f"{f} " + " / ".join(f"b{b} {ms:.1f} ms" for b, ms in by.items())
                          for f, by in self.ms.items())
        kept = self.chosen if len(self.forms()) == 1 else ", ".join(
            f"{f} at batch {'/'.join(str(b) for b, g in self.by_batch.items() if g == f)}"
            for f in self.forms())
        return f"{kept}: fastest measured ({parts})"

    def record(self) -> dict:
        return {"chosen": self.chosen, "ms": {f: {str(b): round(ms, 3) for b, ms in by.items()}
                                              for f, by in self.ms.items()},
                "by_batch": {str(b): f for b, f in self.by_batch.items()},
                "why": self.why()}


def best_by_batch(ms: dict[str, dict[int, float]]) -> dict[int, str]:
    """{batch size: the form fastest at it}; on a tie the earlier form (fp32 before bf16)."""
    first = next(iter(ms))
    return {b: min(ms, key=lambda f: ms[f][b]) for b in ms[first]}


def fastest(models: dict[str, nn.Module], time_ms: Callable[[nn.Module, int], float],
            batches: Iterable[int], rounds: int = 2) -> Choice:
    """The fastest form at each batch size (`best_by_batch`): `time_ms(model, batch)` for
    every form and batch size, forms alternated within each round (drift hits all alike), the
    fastest round kept."""
    batches = sorted(batches)
    if len(models) == 1:
        only = next(iter(models))
        return Choice(only, by_batch=dict.fromkeys(batches, only))
    ms: dict[str, dict[int, float]] = {f: {} for f in models}
    for _ in range(rounds):
        for b in batches:
            for form, model in models.items():
                t = time_ms(model, b)
                ms[form][b] = min(ms[form].get(b, t), t)
    by_batch = best_by_batch(ms)
    return Choice(by_batch[batches[-1]], ms, by_batch)
