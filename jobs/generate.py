"""Continue test clips with a token generator (NBP); score the frames against the truth.

    python -m jobs.generate --model nbp-2d --data data/2d-demo-s0 --cond-frames 4  # make demo data
    python -m jobs.generate --model nbp-2d --data DIR --temperature 0.8 --top-k 50 --seed 1

For each of the first `--clips` test sequences the first `--cond-frames` frames are the
condition; the generator (`framecast.models.contract.TokenGenerator`) encodes them with its own
tokenizer, generates the remaining frames block by block, and decodes them. Printed and logged
to MLflow: PSNR/SSIM/MSE per generated frame against the truth and against copy-last-frame (the
last condition frame held still), the generator's forward steps, frames per second with the
tokenizer's encode and decode included (as the NBP paper counts), and an animated GIF of truth |
generated.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from framecast.config import ConfigError, check_bounds, flat_params
from jobs.common import load_logged_model, note_other_data_kind, run_job


@dataclass(frozen=True)
class GenerateConfig:
    model: str = field(default="", metadata={
        "help": "the generator: registered name, name@alias, run id or URI (required)"})
    data: str = field(default="", metadata={"help": "data set folder (required)"})
    cond_frames: int = field(default=1, metadata={
        "help": "frames given as the condition; the rest of each clip is generated"})
    clips: int = field(default=8, metadata={"help": "test clips to continue (0: all)"})
    temperature: float = field(default=0.0, metadata={
        "help": "sampling temperature; 0 = greedy"})
    top_k: int = field(default=0, metadata={"help": "sample among the k likeliest tokens; 0 = all"})
    seed: int = field(default=0, metadata={"help": "sampling seed (same seed, same frames)"})
    batch_size: int = field(default=8, metadata={"help": "clips generated together"})
    experiment: str = field(default="framecast", metadata={"help": "MLflow experiment"})

    def __post_init__(self) -> None:
        if not self.model or not self.data:
            raise ConfigError("--model and --data are required")
        check_bounds(self, positive=("batch_size",),
                     non_negative=("temperature", "top_k", "clips", "seed"))
        from framecast.models.nbp import check_sampling

        try:
            check_sampling(self.temperature, self.top_k, self.seed)  # inf, past 64 bits
        except ValueError as err:
            raise ConfigError(str(err)) from None


def generate_job(config: GenerateConfig) -> dict:
    import mlflow
    import numpy as np

    from framecast import data as fdata
    from framecast import metrics, tracking, viz
    from framecast.generation import continue_clips
    from framecast.models.contract import TokenGenerator
    from framecast.models.nbp import MAX_SEED

    manifest = fdata.read_manifest(config.data)
    t = manifest.config.frame_shape[0]
    if not 1 <= config.cond_frames <= t - 1:
        raise ConfigError(f"--cond-frames {config.cond_frames} must be in 1..{t - 1} "
                          f"(the clips have {t} frames)")
    tracking.use_experiment(config.experiment)
    model, meta = load_logged_model(config.model)
    if not isinstance(model, TokenGenerator):
        raise ConfigError(f"--model {config.model!r} is a {model.family}, not a token generator")
    model.check_data(manifest.config.frame_shape)  # the tokenizer must take these frames
    note_other_data_kind("generate", config.model, meta, manifest)
    test, _ = fdata.load_numpy(config.data, "test")
    test = test[:config.clips] if config.clips else test
    if not len(test):
        raise ConfigError(f"the test split of {config.data} is empty")
    if config.seed + len(test) - 1 > MAX_SEED:  # clip i draws with seed + i
        raise ConfigError(f"--seed {config.seed}: clip i draws with seed + i, so for "
                          f"{len(test)} clips give at most {MAX_SEED - len(test) + 1}")

    k, future = config.cond_frames, t - config.cond_frames
    print(f"generate: {meta['name']} ({config.model}) continues {len(test)} test clips of "
          f"{config.data}: {k} condition frame(s), {future} generated")
    generated, seconds = continue_clips(model, test, k, temperature=config.temperature,
                                        top_k=config.top_k, seed=config.seed,
                                        batch_size=config.batch_size)
    truth = test[:, k:]
    ours = metrics.frame_metrics(generated, truth)
    copy = metrics.frame_metrics(metrics.hold_last_frame(test, k), truth)
    steps = model.forward_steps(tuple(manifest.config.frame_shape), k)
    fps = len(test) * future / seconds
    summary = {f"gen_{m}": v for m, v in metrics.summary(ours).items()}
    summary.update({f"gen_{m}_copy_last": v for m, v in metrics.summary(copy).items()})
    summary.update({"forward_steps": float(steps), "frames_per_s": fps, "seconds": seconds})
    print(f"{'frame':>5} | {'PSNR':>6} {'SSIM':>6} | copy-last {'PSNR':>6} {'SSIM':>6}")
    for j in range(future):
        print(f"{k + j:>5} | {ours['psnr'][j]:6.2f} {ours['ssim'][j]:6.3f} | "
              f"{'':9} {copy['psnr'][j]:6.2f} {copy['ssim'][j]:6.3f}")
    print(f"mean  | PSNR {summary['gen_psnr']:.2f} dB (copy-last "
          f"{summary['gen_psnr_copy_last']:.2f}), SSIM {summary['gen_ssim']:.3f} (copy-last "
          f"{summary['gen_ssim_copy_last']:.3f}); {steps} forward steps per clip, {fps:.2f} "
          f"frames/s (tokenizer included)")
    with tracking.job_run("generate", experiment=config.experiment,
                          run_name=f"generate-{meta['name']}-k{k}", params=flat_params(config),
                          tags={tracking.MODEL_REF_TAG: config.model}) as run:
        mlflow.log_metrics(summary)
        for j in range(future):
            mlflow.log_metrics({"frame_psnr": float(ours["psnr"][j]),
                                "frame_ssim": float(ours["ssim"][j])}, step=k + j)
        side_by_side = np.concatenate([test[:4], np.concatenate(
            [test[:4, :k], generated[:4]], axis=1)], axis=3)  # truth | condition + generated
        tracking.log_file_bytes(viz.gif_bytes(side_by_side), "generation", "truth_generated.gif")
    print(f"generate: logged MLflow run {run.info.run_id}")
    return {"run_id": run.info.run_id, "summary": summary, "generated": generated}


def main(argv: list[str] | None = None) -> int:
    return run_job("generate", GenerateConfig, generate_job, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
