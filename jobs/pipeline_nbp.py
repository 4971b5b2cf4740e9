"""The pipeline's NBP stage on the 2D data: an FSQ tokenizer, an NBP generator on its tokens,
continuations of the test clips scored against the truth, the generator quantized to W8A8 and
served with one HTTP /generate request whose frames are logged next to the demo's outputs.

Each step is reused when a FINISHED run with the same inputs exists, like the V-BLT stages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from jobs.generate import GenerateConfig, generate_job
from jobs.quantize import QuantizeJobConfig, quantize
from jobs.train import TrainJobConfig, train

# Scale per pipeline preset. demo: 16x16 frames -> a 12x4x4 token grid (fsq small, 4x), one
# frame per block; minutes on 2 cores. paper: the paper's tokenizer and 700M generator (GPU).
NBP_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {"tokenizer": {"preset": "tiny", "steps": 4, "batch_size": 4, "log_every": 2,
                            "checkpoint_every": 4, "eval_sequences": 4},
              "generator": {"preset": "tiny", "steps": 4, "batch_size": 4, "log_every": 2,
                            "checkpoint_every": 4, "eval_sequences": 4},
              "quantize": {"stage_steps": 1, "final_steps": 1, "batch_size": 4,
                           "eval_sequences": 4, "calib_batches": 1, "latency_repeats": 1}},
    "demo": {"tokenizer": {"preset": "small", "steps": 150, "batch_size": 8, "lr": 2e-3,
                           "log_every": 50, "checkpoint_every": 150},
             "generator": {"preset": "small", "steps": 150, "batch_size": 8, "lr": 2e-3,
                           "log_every": 50, "checkpoint_every": 150,
                           "model_config": "block=1x4x4"},
             "quantize": {"stage_steps": 3, "final_steps": 5, "eval_sequences": 8,
                          "latency_repeats": 3}},
    "paper": {"tokenizer": {"preset": "paper", "steps": 5000, "batch_size": 16, "lr": 1e-3,
                            "checkpoint_every": 1000},
              "generator": {"preset": "paper", "steps": 20_000, "batch_size": 16, "lr": 3e-4,
                            "checkpoint_every": 1000},
              "quantize": {"stage_steps": 100, "final_steps": 300, "batch_size": 16}},
}


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


def _staged(stage: str, key_inputs: dict, experiment: str, done: dict[str, str], run) -> dict:
    """Run `run()` unless a FINISHED run of the same stage and inputs exists; the result's
    'run_id' and 'reuse' tags travel through the run's tags so a rerun gets them back."""
    from framecast import tracking

    key = tracking.stage_key(stage, **key_inputs)
    if previous := tracking.finished_stage(key, experiment):
        done[stage] = f"reused {previous.info.run_id}"
        print(f"pipeline: {stage}: reusing finished run {previous.info.run_id}")
        tags = previous.data.tags
        return {"run_id": previous.info.run_id, "metrics": previous.data.metrics,
                **{k[len("framecast.out."):]: v for k, v in tags.items()
                   if k.startswith("framecast.out.")}}
    out = run()
    keep = {k: str(out[k]) for k in ("model_uri", "registered", "version") if out.get(k)}
    tracking.mark_stage(out["run_id"], key, **{f"framecast.out.{k}": v for k, v in keep.items()})
    done[stage] = out["run_id"]
    return out


def nbp_stages(preset: str, data: str, checksums: dict, seed: int, experiment: str,
               parent_run_id: str, done: dict[str, str], train_workers: int = 1
               ) -> GeneratorRow:
    """Tokenizer -> generator -> generation -> W8A8 -> one /generate request, on `data`."""
    import mlflow

    from framecast.config import to_dict

    scale = NBP_PRESETS[preset]

    def fit(model: str, settings: dict[str, Any], extra_config: str = "") -> dict:
        settings = dict(settings)
        model_config = ",".join(filter(None, (extra_config, settings.pop("model_config", ""))))
        cfg = TrainJobConfig(data=data, model=model, seed=seed, workers=train_workers,
                             experiment=experiment, model_config=model_config,
                             name=f"{model}-{parent_run_id[:8]}", **settings)
        inputs = {k: v for k, v in to_dict(cfg).items() if k not in ("name", "experiment")}
        return _staged(f"train-{model}", {"config": inputs, "data": checksums}, experiment,
                       done, lambda: train(cfg))

    tokenizer = fit("fsq", scale["tokenizer"])
    generator = fit("nbp", scale["generator"], f"tokenizer={tokenizer['model_uri']}")
    gen_cfg = GenerateConfig(model=generator["model_uri"], data=data, cond_frames=1, clips=8,
                             seed=seed, experiment=experiment)
    generated = _staged("generate-nbp", {"config": to_dict(gen_cfg), "data": checksums},
                        experiment, done,
                        lambda: (lambda out: {**out, "metrics": out["summary"]})(
                            generate_job(gen_cfg)))
    quant_cfg = QuantizeJobConfig(model=generator["model_uri"], data=data, seed=seed,
                                  experiment=experiment, **scale["quantize"])
    quantized = _staged("quantize-nbp", {"config": {k: v for k, v in to_dict(quant_cfg).items()
                                                    if k != "experiment"}, "data": checksums},
                        experiment, done, lambda: quantize(quant_cfg))
    registered, version = quantized["registered"], quantized["version"]

    gen, quant = generated["metrics"], quantized["metrics"]
    mlflow.log_metrics({"nbp_gen_psnr": gen["gen_psnr"], "nbp_size_ratio": quant["size_ratio"]})
    tok_metrics = tokenizer["metrics"]
    return GeneratorRow(
        tokenizer=f"{tokenizer['registered']} v{tokenizer['version']}",
        generator=f"{generator['registered']} v{generator['version']}",
        int8=f"{registered} v{version}",
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
