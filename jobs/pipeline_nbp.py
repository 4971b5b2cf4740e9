"""The pipeline's NBP stage on the 2D data: an FSQ tokenizer, an NBP generator on its tokens,
continuations of the test clips scored against the truth, the generator quantized to W8A8 and
served with one HTTP /generate request whose frames are logged next to the demo's outputs.

Each step is reused when a FINISHED run with the same inputs exists, through the same
`reuse_or_run` as the frame model's stages (jobs/pipeline_stages.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.generate import GenerateConfig, generate_job
from jobs.pipeline_stages import (
    GENERATOR,
    PRESETS,
    TOKENIZER,
    config_inputs,
    quantize_stage,
    reuse_or_run,
    shown,
    train_stage,
    with_summary_as_metrics,
)
from jobs.quantize import QuantizeJobConfig
from jobs.train import TrainJobConfig


@dataclass(frozen=True)
class GeneratorRow:
    """The closing summary's NBP line."""
    tokenizer: str
    generator: str
    int8: str
    recon_psnr: float
    gen_psnr: float
    gen_psnr_copy: float
    forward_steps: float
    frames_per_s: float
    size_ratio: float
    psnr_drop_db: float
    serve_ms: float  # filled by the pipeline's Serve stage


def nbp_stages(preset: str, data: str, checksums: dict, seed: int, experiment: str,
               parent_run_id: str, done: dict[str, str], train_workers: int = 1
               ) -> GeneratorRow:
    """Tokenizer -> generator -> generation -> W8A8 (its /generate request: the pipeline's Serve
    stage), on `data`."""
    import mlflow

    from framecast import tracking

    scale = PRESETS[preset]["nbp"]

    def fit(model: str, settings: dict[str, Any], extra_config: str = "") -> dict[str, Any]:
        settings = dict(settings)
        model_config = ",".join(filter(None, (extra_config, settings.pop("model_config", ""))))
        cfg = TrainJobConfig(data=data, model=model, seed=seed, workers=train_workers,
                             experiment=experiment, model_config=model_config,
                             name=f"{model}-{parent_run_id[:8]}", **settings)
        return train_stage(f"train-{model}", cfg, checksums, done)

    tokenizer = fit(TOKENIZER, scale["tokenizer"])
    generator = fit(GENERATOR, scale["generator"], f"tokenizer={tokenizer['model_uri']}")
    gen_cfg = GenerateConfig(model=generator["model_uri"], data=data, cond_frames=1, clips=8,
                             seed=seed, experiment=experiment)
    label = f"generate-{GENERATOR}"
    key = tracking.stage_key(label, config=config_inputs(gen_cfg), data=checksums)
    generated = reuse_or_run(label, key, experiment, done,
                             lambda: with_summary_as_metrics(generate_job(gen_cfg)))
    quantized = quantize_stage(
        f"quantize-{GENERATOR}", QuantizeJobConfig(model=generator["model_uri"], data=data,
                                                   seed=seed, experiment=experiment,
                                                   **scale["quantize"]),
        checksums, done)

    gen, quant = generated["metrics"], quantized["metrics"]
    mlflow.log_metrics({f"{GENERATOR}_gen_psnr": gen["gen_psnr"],
                        f"{GENERATOR}_size_ratio": quant["size_ratio"]})
    tok_metrics = tokenizer["metrics"]
    return GeneratorRow(
        tokenizer=shown(tokenizer), generator=shown(generator), int8=shown(quantized),
        recon_psnr=tok_metrics.get("val_psnr", tok_metrics.get("final_val_psnr", float("nan"))),
        gen_psnr=gen["gen_psnr"], gen_psnr_copy=gen["gen_psnr_copy_last"],
        forward_steps=gen["forward_steps"], frames_per_s=gen["frames_per_s"],
        size_ratio=quant["size_ratio"], psnr_drop_db=quant["psnr_drop_db"],
        serve_ms=float("nan"))


def log_served_generation(clip: np.ndarray, served: dict[str, Any]) -> None:
    """The served /generate answer as a GIF in the parent run: truth | context + served frames."""
    from framecast import tracking, viz

    side = clip.copy()
    start = served["context_frames"]
    side[start:start + len(served["frames"])] = served["frames"]
    tracking.log_file_bytes(viz.gif_bytes(np.concatenate([clip, side], axis=2)[None]), "nbp",
                            "served_generation.gif")


def generator_table(row: GeneratorRow) -> str:
    """The closing summary's NBP part."""
    return (f"NBP on 2D: tokenizer {row.tokenizer} (val recon PSNR {row.recon_psnr:.2f} dB); "
            f"generator {row.generator}: test clips continued from 1 frame, PSNR "
            f"{row.gen_psnr:.2f} "
            f"dB (copy-last {row.gen_psnr_copy:.2f}), {row.forward_steps:.0f} forward steps, "
            f"{row.frames_per_s:.1f} frames/s; W8A8 {row.int8}: {row.size_ratio:.2f}x smaller, "
            f"PSNR change {-row.psnr_drop_db:+.2f} dB; Serve /generate {row.serve_ms:.0f} ms "
            "(frames: artifact nbp/served_generation.gif of the parent run).")
