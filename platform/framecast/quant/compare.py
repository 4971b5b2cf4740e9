"""Float vs quantized, side by side on the same inputs: size, latency and quality."""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from framecast import metrics
from framecast.generation import continue_clips
from framecast.models.contract import TokenGenerator
from framecast.quant.apply import state_bytes


def workload(model: nn.Module, video: torch.Tensor) -> Callable[[], object]:
    """What one timed call of the model is: a forward pass of a frame predictor over `video`
    (B, T, H, W, C); for a token generator, a greedy continuation of the clips from their fewest
    context frames (tokenizer included: what a user of /generate waits for)."""
    if isinstance(model, TokenGenerator):
        k = model.min_context_frames(tuple(video.shape[1:]))
        context, future = video[:, :k].contiguous(), video.shape[1] - k
        return lambda: model.generate(context, future, temperature=0.0)
    return lambda: model(video)


@torch.inference_mode()
def latency_ms(model: nn.Module, video: torch.Tensor, repeats: int = 5, warmup: int = 1
               ) -> float:
    """Median wall time (ms) of one call of the model's `workload` on `video`."""
    model.eval()
    call = workload(model, video)
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        if video.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


MAX_PASSES = 40  # the most passes `timed_passes` asks for


def timed_passes(first_ms: float, repeats: int, span_ms: float) -> int:
    """Passes to time a call whose first pass took `first_ms`: `repeats`, or more for a fast
    call, so the timing spans `span_ms` (at most MAX_PASSES): a median of a few passes of a
    fast call is within a shared machine's noise."""
    return max(repeats, min(MAX_PASSES, math.ceil(span_ms / max(first_ms, 1e-3))))


def timed_rounds(runs: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Each of `runs` (a timing in ms) called `rounds` times, the runs alternated within a round
    so drift hits all alike: every round's time of each."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name].append(run())
    return times


def paired_ratio(over: list[float], under: list[float]) -> float:
    """The median of the rounds' ratios over / under: two forms timed in the same round share
    that round's speed of the machine, so their ratio drifts less than either time."""
    return statistics.median(o / u for o, u in zip(over, under, strict=True))


def deployed_speedups(floats: dict[str, nn.Module], quants: dict[str, nn.Module],
                      videos: np.ndarray, batch_sizes: tuple[int, ...], repeats: int = 5,
                      span_ms: float = 0.0, rounds: int = 4) -> dict[str, float | str]:
    """Latency of every float and quantized compute form (`compute_form`: fp32, and bf16 where
    native and allowed) per batch size, timed side by side: forms alternated, `rounds` rounds
    of medians of `repeats` passes (or as many as span `span_ms`, `timed_passes`), the median
    round kept. At each batch size the deployed quantized form is the fastest of `quants` and
    the best float form the fastest of `floats` (`compute_form.best_by_batch`, as Serve's
    `precision: auto` keeps a form per batch size); speed-ups of the deployed form against fp32
    (`speedup_b*`) and against the best float form (`speedup_vs_best_float_b*`) are the median
    of the rounds' ratios (`paired_ratio`). `best_float` and `quant_compute` name the forms at
    the largest batch size, `*_b<batch>` at each."""
    from framecast.quant.compute_form import best_by_batch

    device = next(next(iter(floats.values())).parameters()).device
    forms = {**{f"float_{f}": m for f, m in floats.items()},
             **{f"quant_{f}": m for f, m in quants.items()}}
    by_batch: dict[int, dict[str, list[float]]] = {}
    for b in batch_sizes:
        idx = np.arange(b) % len(videos)
        video = torch.from_numpy(np.ascontiguousarray(videos[idx])).to(device)
        first = {name: latency_ms(model, video, 1)  # after one-off work (compiles, kernels)
                 for name, model in forms.items()}
        passes = timed_passes(first["float_fp32"], repeats, span_ms)
        by_batch[b] = timed_rounds(
            {name: functools.partial(latency_ms, model, video, passes, warmup=0)
             for name, model in forms.items()}, rounds)
    typical = {name: {b: statistics.median(by_batch[b][name]) for b in batch_sizes}
               for name in forms}
    best_float = best_by_batch({f: typical[f"float_{f}"] for f in floats})
    deployed = best_by_batch({f: typical[f"quant_{f}"] for f in quants})
    last = max(batch_sizes)
    out: dict[str, float | str] = {"best_float": best_float[last],
                                   "quant_compute": deployed[last]}
    for b in batch_sizes:
        out[f"best_float_b{b}"], out[f"quant_compute_b{b}"] = best_float[b], deployed[b]
        for f in floats:
            out[f"latency_ms_{f}_b{b}"] = typical[f"float_{f}"][b]
        for f in quants:
            out[f"latency_ms_quant_{f}_compute_b{b}"] = typical[f"quant_{f}"][b]
        quant_rounds = by_batch[b][f"quant_{deployed[b]}"]
        out[f"latency_ms_quant_b{b}"] = typical[f"quant_{deployed[b]}"][b]
        out[f"speedup_b{b}"] = paired_ratio(by_batch[b]["float_fp32"], quant_rounds)
        out[f"speedup_vs_best_float_b{b}"] = paired_ratio(
            by_batch[b][f"float_{best_float[b]}"], quant_rounds)
    return out


def compression(fp32: nn.Module, quant: nn.Module) -> dict[str, float]:
    """Bytes of what quantization changed (the model without its components: a generator's
    tokenizer stays float) and of the whole unit, float vs quantized."""
    out = {"bytes_fp32": float(state_bytes(fp32, components=False)),
           "bytes_quant": float(state_bytes(quant, components=False)),
           "bytes_total_fp32": float(state_bytes(fp32)),
           "bytes_total_quant": float(state_bytes(quant))}
    out["size_ratio"] = out["bytes_fp32"] / out["bytes_quant"]
    return out


def reported_keys(generator: bool, floats: Iterable[str], quants: Iterable[str],
                  batch_sizes: Iterable[int]) -> frozenset[str]:
    """The numeric keys `compression`, `deployed_speedups` (for these float and quantized
    compute forms and batch sizes) and `quality` (of token generators if `generator`, else of
    frame predictors) return, named before anything is measured; `deployed_speedups` also
    returns its choices as text (best_float, quant_compute, and each per batch size)."""
    blank = np.zeros((1, 1, 8, 8, 1), np.uint8)
    scored = tuple(metrics.frame_metrics(blank, blank))  # the names `quality` summarises
    keys = {"bytes_fp32", "bytes_quant", "bytes_total_fp32", "bytes_total_quant", "size_ratio",
            *(f"{m}_{name}" for m in (*scored, "cross_entropy") for name in ("fp32", "quant")),
            "psnr_drop_db", "ssim_drop", "mse_increase", "cross_entropy_increase"}
    if generator:
        keys |= {"accuracy_fp32", "accuracy_quant", "psnr_quant_vs_fp32", "token_agreement"}
    else:
        keys.add("kl_fp32_quant")
    for b in batch_sizes:
        keys |= {f"latency_ms_{f}_b{b}" for f in floats}
        keys |= {f"latency_ms_quant_{f}_compute_b{b}" for f in quants}
        keys |= {f"latency_ms_quant_b{b}", f"speedup_b{b}", f"speedup_vs_best_float_b{b}"}
    return frozenset(keys)


def quality(fp32: nn.Module, quant: nn.Module, videos: np.ndarray, batch_size: int = 8
            ) -> dict[str, float]:
    """The float and quantized models' scores on the same videos, side by side, by family."""
    if isinstance(fp32, TokenGenerator):
        return generator_quality(fp32, quant, videos, batch_size)
    return predictor_quality(fp32, quant, videos, batch_size)


@torch.inference_mode()
def predictor_quality(fp32: nn.Module, quant: nn.Module, videos: np.ndarray, batch_size: int = 8
            ) -> dict[str, float]:
    """MSE/PSNR/SSIM and cross-entropy (nats per pixel value, against the true frames) of two
    frame predictors, their differences, and KL(fp32 || quantized): how far the quantized
    distributions moved."""
    k = fp32.context_frames
    device = next(fp32.parameters()).device
    preds = {"fp32": [], "quant": []}
    ce = {"fp32": 0.0, "quant": 0.0}
    kl, count = 0.0, 0
    for start in range(0, len(videos), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(videos[start:start + batch_size])).to(device)
        target = batch[:, k:].long().reshape(-1)
        logp = {}
        for name, model in (("fp32", fp32), ("quant", quant)):
            logits = model(batch).float()
            preds[name].append(model.decode(logits).cpu().numpy())
            logp[name] = torch.log_softmax(logits.flatten(0, -2), dim=-1)
            ce[name] += F.nll_loss(logp[name], target, reduction="sum").item()
        kl += F.kl_div(logp["quant"], logp["fp32"], log_target=True, reduction="sum").item()
        count += target.numel()
    truth = videos[:, k:]
    out: dict[str, float] = {}
    for name in ("fp32", "quant"):
        summary = metrics.summary(metrics.frame_metrics(np.concatenate(preds[name]), truth))
        out.update({f"{m}_{name}": v for m, v in summary.items()})
        out[f"cross_entropy_{name}"] = ce[name] / count
    out["psnr_drop_db"] = out["psnr_fp32"] - out["psnr_quant"]
    out["ssim_drop"] = out["ssim_fp32"] - out["ssim_quant"]
    out["mse_increase"] = out["mse_quant"] - out["mse_fp32"]
    out["cross_entropy_increase"] = out["cross_entropy_quant"] - out["cross_entropy_fp32"]
    out["kl_fp32_quant"] = kl / count
    return out


def generator_quality(fp32: TokenGenerator, quant: TokenGenerator, videos: np.ndarray,
                      batch_size: int = 8) -> dict[str, float]:
    """Two token generators on the same clips: token cross-entropy and accuracy (teacher
    forcing), greedy continuations from the fewest context frames scored against the truth
    (MSE/PSNR/SSIM), the quantized continuation against the float one (PSNR, the share of
    identical greedy tokens), and the differences."""
    out: dict[str, float] = {}
    k = fp32.min_context_frames(tuple(videos.shape[1:]))
    generated = {}
    for name, model in (("fp32", fp32), ("quant", quant)):
        scores = model.evaluate(videos, batch_size)
        out[f"cross_entropy_{name}"] = scores["loss"]
        out[f"accuracy_{name}"] = scores["accuracy"]
        generated[name], _ = continue_clips(model, videos, k, batch_size=batch_size)
        summary = metrics.summary(metrics.frame_metrics(generated[name], videos[:, k:]))
        out.update({f"{m}_{name}": v for m, v in summary.items()})
    out["psnr_quant_vs_fp32"] = float(metrics.psnr_per_frame(generated["quant"],
                                                             generated["fp32"]).mean())
    out["token_agreement"] = _token_agreement(fp32, quant, videos, k, batch_size)
    out["psnr_drop_db"] = out["psnr_fp32"] - out["psnr_quant"]
    out["ssim_drop"] = out["ssim_fp32"] - out["ssim_quant"]
    out["mse_increase"] = out["mse_quant"] - out["mse_fp32"]
    out["cross_entropy_increase"] = out["cross_entropy_quant"] - out["cross_entropy_fp32"]
    return out


@torch.inference_mode()
def _token_agreement(fp32: TokenGenerator, quant: TokenGenerator, videos: np.ndarray, k: int,
                     batch_size: int) -> float:
    """Share of greedy generated tokens on which the two generators agree."""
    same = count = 0
    device = next(fp32.parameters()).device
    for start in range(0, len(videos), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(videos[start:start + batch_size])).to(device)
        context = fp32.encode(batch[:, :k])
        frames = fp32.tokenizer.grid(tuple(batch.shape[1:]))[0] - context.shape[1]
        a, _ = fp32.generate_tokens(context, frames)
        b, _ = quant.generate_tokens(context, frames)
        same += int((a == b).sum())
        count += a.numel()
    return same / count
