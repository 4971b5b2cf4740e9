"""VQ-ViT's progressive quantization schedule, on any model of the common interface.

    1. patch convolutions become linear layers (exact); sensitivity S(W) of every linear layer
       over calibration batches; thresholds give the plan (int8 / int8 asymmetric / fp16);
    2. stage by stage, MLP -> attention output -> Q/K/V -> embeddings/head: the stage's layers go
       under fake quantization and a short calibration fine-tune (weights and learnable scales,
       straight-through estimator) lets the rest of the network adapt;
    3. if the stage costs more than `tau_psnr_db` of PSNR against the float model, its most
       sensitive layers fall back one precision (int8 -> int8 asymmetric -> fp16) and the stage
       is fine-tuned again, at most `max_fallbacks` times;
    4. a final global fine-tune, then every layer is frozen into real int8 / fp16 modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from framecast.config import ConfigError
from framecast.quant.apply import STAGES, layer_roles, precision_counts, to_deployed, to_training
from framecast.quant.gemm_form import linearize
from framecast.quant.learnable import QATLinear
from framecast.quant.plan import PlanEntry, Precision, precision_plan
from framecast.quant.sensitivity import weight_sensitivity
from framecast.train import batch_loss

FALLBACK = {Precision.INT8: Precision.INT8_ASYM, Precision.INT8_ASYM: Precision.FP16}


@dataclass(frozen=True)
class QuantConfig:
    tau_low: float = field(default=-1.0, metadata={
        "help": "S(W) threshold between int8 and int8 asymmetric (< 0: the tau_low_quantile "
                "of the model's S values)"})
    tau_high: float = field(default=-1.0, metadata={
        "help": "S(W) threshold between int8 asymmetric and fp16 (< 0: the tau_high_quantile)"})
    tau_low_quantile: float = field(default=0.85, metadata={
        "help": "quantile of S used when tau_low < 0"})
    tau_high_quantile: float = field(default=0.97, metadata={
        "help": "quantile of S used when tau_high < 0"})
    tau_psnr_db: float = field(default=0.3, metadata={
        "help": "a stage that loses more PSNR (dB, vs the float model) falls back"})
    max_fallbacks: int = field(default=2, metadata={"help": "fall-back rounds per stage"})
    calib_batches: int = field(default=4, metadata={"help": "batches for the sensitivity S(W)"})
    stage_steps: int = field(default=20, metadata={"help": "fine-tune steps after each stage"})
    final_steps: int = field(default=40, metadata={"help": "final global fine-tune steps"})
    lr: float = field(default=5e-5, metadata={"help": "fine-tune learning rate of weights"})
    scale_lr: float = field(default=1e-2, metadata={"help": "learning rate of beta and delta"})
    scale_penalty: float = field(default=1e-4, metadata={
        "help": "lambda_1: weight of the weight-scale norm penalty"})

    def __post_init__(self) -> None:
        if not 0 <= self.tau_low_quantile <= self.tau_high_quantile <= 1:
            raise ConfigError("quantiles must satisfy 0 <= tau_low_quantile <= tau_high_quantile "
                             "<= 1")
        if self.tau_low >= 0 and self.tau_high >= 0 and self.tau_low > self.tau_high:
            raise ConfigError(f"tau_low={self.tau_low} must not exceed tau_high={self.tau_high}")
        if self.calib_batches < 1 or min(self.stage_steps, self.final_steps,
                                         self.max_fallbacks) < 0:
            raise ConfigError("calib_batches must be >= 1; steps and fall-backs >= 0")


@dataclass
class QuantResult:
    model: nn.Module  # deployed: int8 / fp16 modules
    plan: list[PlanEntry]  # the final plan, after fall-backs
    thresholds: tuple[float, float]
    reference_psnr: float  # the float model on the evaluation videos
    history: list[dict] = field(default_factory=list)  # one row per stage (and the final tune)


def thresholds(sensitivities: dict[str, float], cfg: QuantConfig) -> tuple[float, float]:
    """(tau_low, tau_high): the configured values, or quantiles of the observed S."""
    values = np.array(list(sensitivities.values()), dtype=np.float64)
    low = cfg.tau_low if cfg.tau_low >= 0 else float(np.quantile(values, cfg.tau_low_quantile))
    high = cfg.tau_high if cfg.tau_high >= 0 else float(np.quantile(values,
                                                                    cfg.tau_high_quantile))
    return low, max(low, high)


def eval_psnr(model: nn.Module, videos: np.ndarray, batch_size: int = 8) -> float:
    """The model family's quality number on the videos (`Model.quality`: mean PSNR in dB of a
    frame predictor's decoded predictions)."""
    return float(model.quality(videos, batch_size))


def fine_tune(model: nn.Module, batches: Iterator[torch.Tensor], steps: int, cfg: QuantConfig
              ) -> float:
    """`steps` AdamW steps of next-frame loss plus the scale penalty; returns the mean loss."""
    if steps <= 0:
        return float("nan")
    device = next(model.parameters()).device
    scales = [p for n, p in model.named_parameters() if n.endswith((".beta", ".delta"))]
    ids = {id(p) for p in scales}
    weights = [p for p in model.parameters() if id(p) not in ids]
    optimizer = torch.optim.AdamW([{"params": weights, "lr": cfg.lr},
                                   {"params": scales, "lr": cfg.scale_lr, "weight_decay": 0.0}],
                                  weight_decay=0.0)
    qat = [m for m in model.modules() if isinstance(m, QATLinear)]
    model.train()
    total = 0.0
    for _ in range(steps):
        loss = batch_loss(model, next(batches).to(device))
        if cfg.scale_penalty and qat:
            loss = loss + cfg.scale_penalty * sum(m.scale_penalty() for m in qat)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        total += loss.item()
    model.eval()
    return total / steps


def progressive_quantize(model: nn.Module, batches: Iterator[torch.Tensor],
                         eval_videos: np.ndarray, cfg: QuantConfig,
                         log: Callable[[str], None] = print) -> QuantResult:
    """Quantize `model` in place by the schedule above; `batches` yields uint8 training videos
    (B, T, H, W, C) for calibration and fine-tuning, `eval_videos` (N, T, H, W, C) measure the
    quality drop."""
    model.eval()
    linearize(model)
    reference = eval_psnr(model, eval_videos)
    device = next(model.parameters()).device
    calib = [next(batches).to(device) for _ in range(cfg.calib_batches)]
    sens = weight_sensitivity(model, calib, batch_loss)
    tau_low, tau_high = thresholds(sens, cfg)
    plan = {e.layer: e for e in precision_plan(sens, tau_low, tau_high)}
    roles = layer_roles(model)
    log(f"quantize: {len(plan)} linear layers, tau_low={tau_low:.4g} tau_high={tau_high:.4g}, "
        f"float PSNR {reference:.2f} dB on {len(eval_videos)} sequences")
    result = QuantResult(model, [], (tau_low, tau_high), reference)
    for stage in STAGES:
        names = [n for n in sorted(plan, key=lambda n: -plan[n].sensitivity) if roles[n] == stage]
        if not names:
            continue
        to_training(model, [plan[n] for n in names])
        loss = fine_tune(model, batches, cfg.stage_steps, cfg)
        drop = reference - eval_psnr(model, eval_videos)
        fallbacks = 0
        while drop > cfg.tau_psnr_db and fallbacks < cfg.max_fallbacks:
            risky = [n for n in names if plan[n].precision in FALLBACK]
            if not risky:
                break
            raised = risky[:max(1, math.ceil(len(names) / 4))]  # the most sensitive quarter
            for n in raised:
                plan[n] = replace(plan[n], precision=FALLBACK[plan[n].precision])
            to_training(model, [plan[n] for n in raised])
            loss = fine_tune(model, batches, cfg.stage_steps, cfg)
            drop = reference - eval_psnr(model, eval_videos)
            fallbacks += 1
            log(f"quantize:   fall-back {fallbacks}: {len(raised)} layer(s) up one precision")
        row = {"stage": stage, "layers": len(names), "loss": loss, "psnr_drop_db": drop,
               "fallbacks": fallbacks, **_stage_counts(plan, names)}
        result.history.append(row)
        log(f"quantize: stage {stage:10s} {len(names):3d} layers  PSNR drop {drop:+.3f} dB  "
            f"fall-backs {fallbacks}  loss {loss:.4f}")
    if cfg.final_steps:
        loss = fine_tune(model, batches, cfg.final_steps, cfg)
        result.history.append({"stage": "final", "layers": len(plan), "loss": loss,
                               "psnr_drop_db": reference - eval_psnr(model, eval_videos),
                               "fallbacks": 0})
        log(f"quantize: final fine-tune {cfg.final_steps} steps, PSNR drop "
            f"{result.history[-1]['psnr_drop_db']:+.3f} dB")
    to_deployed(model)
    result.plan = sorted(plan.values(), key=lambda e: -e.sensitivity)
    log(f"quantize: deployed {precision_counts(model)}")
    return result


def _stage_counts(plan: dict[str, PlanEntry], names: list[str]) -> dict[str, int]:
    return {p.value: sum(plan[n].precision is p for n in names) for p in Precision}
