"""V-BLT quality on a fixed CPU budget vs copy-last-frame, on 2D triangles and 3D polycubes.

    python benchmarks/vblt_quality.py --quick      # < 5 minutes on 2 cores: a smoke-size budget
    python benchmarks/vblt_quality.py              # the stated budget (see --steps)

The real path: `jobs.render` writes each data set, `jobs.train` trains the `small` preset with Ray
Train (1 worker, all cores), and the trained model is evaluated on the test split; copy-last-frame
is scored on the very same frames. The headline PSNR and SSIM use the decoding jobs.train chose
on val (trimmed mean, mean or argmax of each pixel's 256-way distribution); the table gives each
decoding's test scores beside it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import new_parser, parse_kinds  # noqa: E402
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402
from benchmarks.lib.trained import render_and_train  # noqa: E402


def run_kind(kind: str, args: argparse.Namespace, root: Path) -> dict[str, float]:
    from framecast import data as fdata
    from framecast.model_io import load_logged_model
    from framecast.predict import DECODES, evaluate, flat_summary

    data, trained, seconds = render_and_train(kind, sequences=args.sequences, size=args.size,
                                              steps=args.steps, root=root)
    model, _ = load_logged_model(trained["model_uri"])
    test, _ = fdata.load_numpy(data, "test")
    per = {d: flat_summary(evaluate(model, test, decode=d), prefix="") for d in DECODES}
    each = {f"{d}_{k}": v for d, m in per.items() for k, v in m.items()}
    # the headline columns: the decoding chosen on val (one of the three, not scored again)
    return {"seconds": seconds, "decode": model.cfg.decode, **per[model.cfg.decode], **each}


def main() -> None:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per data set (default 1000; 60 with --quick)")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences per data set (default 2000; 320 with --quick)")
    parser.add_argument("--size", type=int, default=None,
                        help="frame size (default 32; 16 with --quick: 60 steps at 32x32 took "
                             "6 min on 2 cores)")
    parser.add_argument("--kinds", default="2d,3d",
                        help="data sets, comma-separated (default 2d,3d)")
    args = parser.parse_args()
    kinds = parse_kinds(args.kinds, parser)
    args.size = args.size or (16 if args.quick else 32)
    args.steps = args.steps or (60 if args.quick else 1000)
    args.sequences = args.sequences or (320 if args.quick else 2000)

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FRAMECAST_HOME", tmp)  # keep benchmark runs out of the user store
        results = {kind: run_kind(kind, args, Path(tmp)) for kind in kinds}
    from framecast.distribution import DECODES

    rows = [[kind, args.steps, r["seconds"], r["decode"], r["psnr"], r["psnr_copy_last"],
             r["ssim"], r["ssim_copy_last"], r["mse"], r["mse_copy_last"],
             *(f"{r[f'{d}_psnr']:.2f} / {r[f'{d}_ssim']:.3f}" for d in DECODES),
             r["cross_entropy"]]
            for kind, r in results.items()]
    table = markdown_table(["data", "steps", "train s", "decoding (val)", "PSNR",
                            "PSNR copy-last", "SSIM", "SSIM copy-last", "MSE", "MSE copy-last",
                            *(f"PSNR / SSIM {d}" for d in DECODES),
                            "CE nats"], rows)
    notes = (f"Budget: {args.steps} AdamW steps of batch 8 per data set, V-BLT `small` preset, "
             f"1 Ray Train worker on {os.cpu_count()} CPU cores; {args.sequences} sequences of "
             f"12x{args.size}x{args.size} per data set (80% train); test split scored. 'train s' "
             f"includes Ray Train start-up and the final val evaluation. The model reads its "
             f"predictions with the decoding that scored best on val (jobs.train); each "
             f"decoding's test scores are beside.")
    values = {}
    for kind, r in results.items():
        values[f"psnr_{kind}"] = r["psnr"]
        values[f"psnr_copy_{kind}"] = r["psnr_copy_last"]
        values[f"ssim_{kind}"] = r["ssim"]
        values[f"ssim_copy_{kind}"] = r["ssim_copy_last"]
    values["steps"] = args.steps
    report("vblt_quality", "V-BLT vs copy-last-frame on CPU", table, notes,
           f"RESULT vblt_quality {key_values(values)}")


if __name__ == "__main__":
    main()
