"""NBP generator latency in its precision forms (fp32, bf16, W8A8, linears free) on any device:
the third table of `benchmarks/quantize.py` on the CPU and `benchmarks/quantize_gpu.py` on a GPU.
Plain torch and framecast only (no Ray, MLflow or PyVista), so it runs on the lent GPU machine."""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from framecast.quant import kernels

# NBPConfig's own defaults (LLaMA-like widths): GEMMs wide enough for int8 to matter.
NBP_WIDE = {"dim": 384, "heads": 8, "layers": 6, "mlp_hidden": 1024}
# Each timing spans at least this long (`compare.timed_passes`).
SPAN_MS = 300.0
# Rounds of alternated timings, the median kept: on a shared machine the same model's speed
# drifts between rounds and more between processes, so forms are compared within a process,
# round by round.
ROUNDS = 4


class FreeLinear(nn.Module):
    """Stands in for a linear layer at no cost (a cached zero output of the right shape): a model
    whose linears all cost nothing times the bound on any speed-up from quantizing them."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features = linear.out_features
        self.cache: dict[tuple, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.shape[:-1], x.dtype, x.device)
        if key not in self.cache:
            self.cache[key] = torch.zeros(*x.shape[:-1], self.out_features, dtype=x.dtype,
                                          device=x.device)
        return self.cache[key]


def nbp_rows(preset: str, size: int, repeats: int, overrides: dict | None = None,
             device: str = "cpu", batches: tuple[int, ...] = (1, 8), span_ms: float = SPAN_MS,
             rounds: int = ROUNDS) -> list[dict[str, float | str]]:
    """An untrained NBP generator `preset` (+ overrides) with an untrained `fsq small` tokenizer
    on (12, size, size) clips: size ratio of the generator, greedy generation latency (one
    condition frame, 11 generated, tokenizer encode/decode included) per batch size for fp32,
    bf16 (where native), W8A8 (the job's plan rule on the measured kernels) and linears free
    (the bound), alternated in `rounds` rounds of `repeats` passes (or as many as span
    `span_ms`), the median round kept; and how far W8A8 moves the next-block logits from
    fp32's on the same tokens (teacher-forced: share of equal argmax tokens, relative logit
    error; an
    untrained generator's free-running generations diverge chaotically after one flipped
    token, so its frames measure nothing). Weights are drawn larger than at init so that greedy
    choices are not near-ties."""
    from framecast.models import registry
    from framecast.quant import compare, compute_form
    from framecast.quant.apply import quantize_model, replace_layers
    from framecast.quant.plan import precision_plan
    from framecast.quant.schedule import QuantConfig, thresholds
    from framecast.quant.sensitivity import linear_weights, weight_sensitivity
    from framecast.train import batch_loss

    torch.manual_seed(0)
    tokenizer = registry.create("fsq", "small")
    fp32 = registry.build("nbp", registry.model_config("nbp", preset, **(overrides or {})),
                          tokenizer=tokenizer).eval()
    with torch.no_grad():
        for name, p in fp32.named_parameters():
            if p.dim() > 1 and not name.startswith("tokenizer."):
                p.normal_(0.0, 1.5 / p.shape[-1] ** 0.5)
    fp32 = fp32.to(device)
    videos = torch.randint(0, 256, (max(batches), 12, size, size, 1), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0)).to(device)
    quant = copy.deepcopy(fp32)
    sens = weight_sensitivity(quant, [videos[:2]], batch_loss)
    quantize_model(quant, precision_plan(sens, *thresholds(sens, QuantConfig())))
    free = copy.deepcopy(fp32)
    replace_layers(free, linear_weights(free), lambda _, linear: FreeLinear(linear))
    with torch.inference_mode():  # teacher-forced: the same tokens in, how far the logits move
        tokens = fp32.encode(videos[:8])
        want, got = fp32(tokens), quant(tokens)
    agreement = {"argmax": float((want.argmax(-1) == got.argmax(-1)).float().mean()),
                 "logit_error": float((got - want).norm() / want.norm())}
    forms = {"fp32": fp32, "w8a8": quant, "bound": free}
    if kernels.native_16bit(torch.bfloat16, device):
        forms["bf16"] = compute_form.in_form(fp32, "bf16")
        forms["w8a8_bf16"] = compute_form.in_form(quant, "bf16")
    label = preset + "".join(f", {k}={v}" for k, v in (overrides or {}).items())
    by_batch: dict[int, dict[str, list[float]]] = {}
    for b in batches:
        video = videos[:b]
        for model in forms.values():  # warm-up: quantizer compile, kernel measurement
            compare.latency_ms(model, video, 1, warmup=0)
        n = compare.timed_passes(compare.latency_ms(fp32, video, 1, warmup=0), repeats,
                                 span_ms)
        by_batch[b] = compare.timed_rounds(
            {name: functools.partial(compare.latency_ms, model, video, n, warmup=0)
             for name, model in forms.items()}, rounds)
    return [{"model": label, "batch": b,
             "size_ratio": compare.compression(fp32, quant)["size_ratio"],
             "argmax_agreement": agreement["argmax"], "logit_error": agreement["logit_error"],
             **row} for b, row in form_columns(by_batch).items()]


FORM_NAMES = ("fp32", "bf16", "w8a8", "w8a8_bf16", "bound")


def form_columns(by_batch: dict[int, dict[str, list[float]]]
                 ) -> dict[int, dict[str, float | str]]:
    """Per batch size, from each form's round times (`compare.timed_rounds`): each form's ms
    (the median round) and speed-up over fp32 ('not native on this CPU' for the bf16 forms
    where they were not run), and the two forms a user gets at that batch size: the best float
    form (fp32 or bf16) and the deployed W8A8 form (its float compute in fp32 or bf16), each
    the faster there (`compute_form.best_by_batch`, as Serve's `precision: auto` keeps a form
    per batch size), with W8A8's ratios to fp32 and to the best float form as the median of
    the rounds' ratios (`compare.paired_ratio`)."""
    import statistics

    from framecast.quant.compare import paired_ratio
    from framecast.quant.compute_form import best_by_batch

    ms = {b: {name: statistics.median(t) for name, t in rounds.items()}
          for b, rounds in by_batch.items()}

    def pick(pairs: dict[str, str]) -> dict[int, str]:
        there = {form: name for form, name in pairs.items() if name in ms[min(ms)]}
        chosen = best_by_batch({f: {b: m[n] for b, m in ms.items()} for f, n in there.items()})
        return {b: there[f] for b, f in chosen.items()}

    def ratio(b: int, over: str, under: str) -> float:
        rounds = by_batch[b]
        if len(rounds[over]) == len(rounds[under]):
            return paired_ratio(rounds[over], rounds[under])
        return ms[b][over] / ms[b][under]  # one of them timed once (too slow to repeat)
    best_float = pick({"fp32": "fp32", "bf16": "bf16"})
    deployed = pick({"fp32": "w8a8", "bf16": "w8a8_bf16"})
    out: dict[int, dict[str, float | str]] = {}
    for b, m in ms.items():
        row: dict[str, float | str] = {}
        for name in FORM_NAMES:
            missing = "not native on this CPU"
            row[f"ms_{name}"] = m.get(name, missing)
            if name != "fp32":
                row[f"speedup_{name}"] = m["fp32"] / m[name] if name in m else missing
        row.update({"best_float": best_float[b], "ms_best_float": m[best_float[b]],
                    "w8a8_deployed": deployed[b], "ms_w8a8_deployed": m[deployed[b]],
                    "speedup_w8a8_deployed": ratio(b, "fp32", deployed[b]),
                    "w8a8_vs_best_float": ratio(b, best_float[b], deployed[b])})
        out[b] = row
    return out
