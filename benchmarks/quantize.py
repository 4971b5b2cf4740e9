"""fp32 vs mixed-precision W8A8 V-BLT side by side: size, latency (batch 1 and 8), quality.

    python benchmarks/quantize.py --quick     # < 5 minutes on 2 cores
    python benchmarks/quantize.py             # the stated budget (see --steps)
    python benchmarks/quantize.py --model vblt-2d --data data/2d-demo-s0   # an existing model

The real path: a `small` V-BLT trained with `jobs.train` on 2D triangles (or the model given),
quantized by `jobs.quantize` (sensitivity, thresholds, progressive schedule with fine-tunes and
fall-back, real int8 modules), compared on the test split. A second row times the `paper` preset
(12x64x64, d=384) fp32 vs quantized with the same plan rule: size and speed do not depend on
training, so it is left untrained and reports no quality.
Paper (VQ-ViT on ImageNet ViTs): 4x smaller, ~3x faster, -0.4 points of accuracy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402
from benchmarks.lib.trained import render_and_train  # noqa: E402


def trained_row(args: argparse.Namespace, root: Path) -> dict[str, float]:
    from jobs.quantize import QuantizeJobConfig, quantize

    if args.model:
        model, data = args.model, args.data
    else:
        data, trained, _ = render_and_train("2d", sequences=args.sequences, size=args.size,
                                            steps=args.steps, root=root)
        model = trained["run_id"]
    schedule = {"stage_steps": 5, "final_steps": 10} if args.quick else {}
    out = quantize(QuantizeJobConfig(model=model, data=str(data), register="none",
                                     latency_repeats=args.repeats,
                                     experiment="framecast-benchmarks", **schedule))
    return out["metrics"]


def paper_row(args: argparse.Namespace) -> dict[str, float]:
    """The paper preset, untrained: a plan from S(W) on one random batch, post-training
    quantization, then size and latency side by side."""
    import copy

    import torch

    from framecast.models import create
    from framecast.quant import compare
    from framecast.quant.apply import quantize_model
    from framecast.quant.gemm_form import linearize
    from framecast.quant.plan import precision_plan
    from framecast.quant.schedule import QuantConfig, thresholds
    from framecast.quant.sensitivity import weight_sensitivity
    from framecast.train import next_frame_loss

    torch.manual_seed(0)
    fp32 = create("vblt", "paper").eval()
    videos = torch.randint(0, 256, (8, 12, 64, 64, 1), dtype=torch.uint8)
    quant = copy.deepcopy(fp32)
    linearize(quant)
    sens = weight_sensitivity(quant, [videos[:1]], next_frame_loss)
    quantize_model(quant, precision_plan(sens, *thresholds(sens, QuantConfig())))
    return {**compare.compression(fp32, quant),
            **compare.speedups(fp32, quant, videos.numpy(), (1, 8), args.paper_repeats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps (default 1000; 60 with --quick)")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences in the data set (default 2000; 320 with --quick)")
    parser.add_argument("--size", type=int, default=32, help="frame size (default 32)")
    parser.add_argument("--model", default="", help="quantize this logged model instead of "
                                                    "training one (with --data)")
    parser.add_argument("--data", default="", help="the data set of --model")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed passes per size (default 7; 3 with --quick)")
    args = parser.parse_args()
    if bool(args.model) != bool(args.data):
        parser.error("--model and --data go together")
    args.steps = args.steps or (60 if args.quick else 1000)
    args.sequences = args.sequences or (320 if args.quick else 2000)
    args.repeats = args.repeats or (3 if args.quick else 7)
    args.paper_repeats = 1 if args.quick else 3

    with tempfile.TemporaryDirectory() as tmp:
        if not args.model:
            os.environ.setdefault("FRAMECAST_HOME", tmp)  # keep runs out of the user store
        small = trained_row(args, Path(tmp))
    paper = paper_row(args)
    rows = [["small, trained 2D", small["bytes_fp32"] / 1e6, small["bytes_quant"] / 1e6,
             small["size_ratio"], small["latency_ms_fp32_b1"], small["latency_ms_quant_b1"],
             small["speedup_b1"], small["latency_ms_fp32_b8"], small["latency_ms_quant_b8"],
             small["speedup_b8"], small["psnr_fp32"], small["psnr_quant"],
             small["ssim_fp32"], small["ssim_quant"], small["kl_fp32_quant"]],
            ["paper, untrained", paper["bytes_fp32"] / 1e6, paper["bytes_quant"] / 1e6,
             paper["size_ratio"], paper["latency_ms_fp32_b1"], paper["latency_ms_quant_b1"],
             paper["speedup_b1"], paper["latency_ms_fp32_b8"], paper["latency_ms_quant_b8"],
             paper["speedup_b8"], "-", "-", "-", "-", "-"]]
    table = markdown_table(["model", "MB fp32", "MB quant", "size ratio", "b1 ms fp32",
                            "b1 ms quant", "speed-up b1", "b8 ms fp32", "b8 ms quant",
                            "speed-up b8", "PSNR fp32", "PSNR quant", "SSIM fp32", "SSIM quant",
                            "KL nats/byte"], rows)
    source = (f"model {args.model} on {args.data}" if args.model else
              f"`small` preset trained {args.steps} steps (batch 8) on {args.sequences} 2D "
              f"sequences of 12x{args.size}x{args.size}")
    schedule = ("quick schedule: 5 steps per stage, 10 final" if args.quick else
                "default schedule: 20 steps per stage, 40 final")
    notes = (f"{source}; quantized by jobs.quantize ({schedule}); test split scored; "
             f"latency = median of {args.repeats} forward passes, fp32 and "
             f"quantized alternated, {os.cpu_count()} CPU threads. Paper row: 12x64x64 inputs, "
             f"median of {args.paper_repeats}. Targets: >= 3.5x smaller, >= 2.5x faster, PSNR "
             "within 0.3 dB.")
    values = {"size_ratio": small["size_ratio"], "speedup_b1": small["speedup_b1"],
              "speedup_b8": small["speedup_b8"], "psnr_drop_db": small["psnr_drop_db"],
              "size_ratio_paper": paper["size_ratio"], "speedup_b1_paper": paper["speedup_b1"],
              "speedup_b8_paper": paper["speedup_b8"]}
    report("quantize", "V-BLT fp32 vs mixed-precision W8A8 (VQ-ViT)", table, notes,
           f"RESULT quantize {key_values(values)}")


if __name__ == "__main__":
    main()
