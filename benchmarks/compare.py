"""V-BLT vs ViViT vs UNet-3D at an equal CPU budget (the V-BLT paper's tables 1 and 2), on the
"hard" data preset (objects fill the frame, fast spins: copy-last-frame well below the paper's
V-BLT row).

    python benchmarks/compare.py --quick          # < 5 minutes on 2 cores: smoke size, 2D only
    python benchmarks/compare.py --steps 300 --size 32 --sequences 600
    python benchmarks/compare.py --export data/compare-paper.npz --size 64   # for compare_gpu.py

The real path: `jobs.render --preset hard` writes each data set, `jobs.compare` trains every
model through `jobs.train` (Ray Train, 1 worker, same steps/batch/lr/seed) and scores all with
the rollout protocol: the same --context frames in, the rest of each test clip predicted from the
model's own outputs, copy-last-frame (the last context frame held) beside them. Appends table 1
(with the `paper` presets' cost at 12x64x64 beside the paper's), table 2 (rollout), PSNR per
frame ahead (also drawn to benchmarks/figures/compare_horizon.png), the teacher-forced table and
the learning curves to benchmarks/RESULTS.md. The last line is `RESULT compare
rollout_psnr_<model>_<kind>=.. psnr_<model>_<kind>=.. (teacher-forced) gflops_<model>_paper=..
mb_<model>_paper=..`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import new_parser, parse_kinds  # noqa: E402
from benchmarks.lib.report import key_values, report  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIGURE = REPO / "benchmarks" / "figures" / "compare_horizon.png"


def render_hard(kind: str, *, sequences: int, size: int, root: Path, workers: int = 2) -> Path:
    """`jobs.render --preset hard` for one kind; returns the data folder."""
    from framecast.render.spec import DATA_PRESETS
    from jobs.render import RenderJobConfig, render

    return render(RenderJobConfig(kind=kind, num_sequences=sequences, frames=12, size=size,
                                  out=str(root / f"{kind}-hard-{size}"), mlflow=False,
                                  workers=workers, **DATA_PRESETS["hard"])).out


def export(path: Path, *, sequences: int, size: int) -> None:
    """Render both kinds and pack them as the .npz `compare_gpu.py` reads."""
    import numpy as np

    from framecast import data as fdata
    from framecast.cluster import init_ray

    init_ray()
    arrays = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("2d", "3d"):
            data = render_hard(kind, sequences=sequences, size=size, root=Path(tmp))
            for split in ("train", "val", "test"):
                arrays[f"{kind}_{split}"] = fdata.load_numpy(data, split)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"export: {path} ({path.stat().st_size / 2**20:.1f} MB): "
          + ", ".join(f"{k} {v.shape}" for k, v in arrays.items()))


def main() -> None:
    begin = time.perf_counter()
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per model and data set (default 300; 30 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="default 8")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW lr (default 2e-3)")
    parser.add_argument("--lrs", default="",
                        help="peak lrs to try, comma-separated: each model keeps the one with "
                             "the best rollout PSNR on val (jobs.compare --lrs); default: --lr "
                             "alone")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences per data set (default 600; 160 with --quick)")
    parser.add_argument("--size", type=int, default=None,
                        help="frame size (default 32; 16 with --quick)")
    parser.add_argument("--models", default="vblt,vivit,unet3d",
                        help="frame predictors to compare, comma-separated")
    parser.add_argument("--kinds", default=None,
                        help="data sets, comma-separated (default 2d,3d; 2d with --quick: six "
                             "Ray Train fits do not fit in 5 minutes)")
    parser.add_argument("--preset", default="small", help="model preset (default small)")
    parser.add_argument("--context", type=int, default=4,
                        help="frames every model is given before its rollout (default 4)")
    parser.add_argument("--own-inputs", type=float, default=0.0,
                        help="scheduled sampling for every model: the fraction of predicted "
                             "frames replaced by its own predictions in training (default 0)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between val points of the learning curves (default steps/5)")
    parser.add_argument("--export", default="", help="only render and pack an .npz here")
    args = parser.parse_args()
    args.steps = args.steps or (30 if args.quick else 300)
    args.sequences = args.sequences or (160 if args.quick else 600)
    args.size = args.size or (16 if args.quick else 32)
    args.eval_every = args.eval_every or max(args.steps // 5, 1)
    if not 1 <= args.context < 12:  # the benchmark renders 12-frame clips
        parser.error(f"--context {args.context}: give 1..11 (frames of the 12-frame clips)")
    if not 0 <= args.own_inputs < 1:
        parser.error(f"--own-inputs {args.own_inputs}: give a fraction in [0, 1)")
    args.kinds = parse_kinds(args.kinds or ("2d" if args.quick else "2d,3d"), parser)
    if args.export:
        export(Path(args.export), sequences=args.sequences, size=args.size)
        return

    from framecast.cluster import init_ray
    from jobs.compare import CompareConfig, compare

    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("FRAMECAST_HOME", tmp)  # keep benchmark runs out of the user store
        init_ray()
        root = Path(tmp)
        dirs = [render_hard(k, sequences=args.sequences, size=args.size, root=root)
                for k in args.kinds]
        start = time.perf_counter()
        result = compare(CompareConfig(
            data=",".join(map(str, dirs)), models=args.models, preset=args.preset,
            context=args.context, own_inputs=args.own_inputs,
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, lrs=args.lrs,
            eval_every=args.eval_every, eval_sequences=16, checkpoint_every=args.steps,
            log_every=max(args.steps // 10, 1), out=str(root / "tables"),
            storage=str(root / "ray"), experiment="framecast-benchmarks"))
        wall = time.perf_counter() - start
    from framecast import comparison

    paper = paper_cost_rows(args.models.split(","))
    curves = comparison.markdown([{k: r.get(k) for k in ("data", "model", "step", "val_psnr",
                                                          "val_psnr_copy_last", "val_ssim")}
                                  for r in result["curves"]])
    FIGURE.parent.mkdir(exist_ok=True)
    FIGURE.write_bytes(comparison.horizon_chart(result["horizon"]))
    tables = (f"Table 1 (size, compute per sequence; {comparison.FLOPS_CONVENTION}; paper "
              "columns: the V-BLT paper)\n\n" + comparison.markdown(result["cost"] + paper)
              + "\n\n" + "\n".join(f"- {n}" for n in comparison.convention_notes(paper))
              + f"\n\nTable 2 (test split; rollouts from the same {args.context} context frames, "
              "each model fed its own predictions; copy-last holds the last context frame; "
              "frames/step: frames one forward step predicts)\n\n"
              + comparison.markdown(result["quality"])
              + f"\n\nRollout PSNR (dB) per frame ahead (plot: {FIGURE.relative_to(REPO)})\n\n"
              + comparison.markdown(result["horizon"])
              + "\n\nTeacher-forced (each frame from the true frames before it; every model and "
              "copy-last on the frames after the longest context)\n\n"
              + comparison.markdown(result["teacher_forced"])
              + "\n\nLearning curves (val split, teacher-forced, read with the trimmed mean "
              "during training)\n\n" + curves)
    if result["lr_sweep"]:
        tables += ("\n\nLearning rates (rollout PSNR on val, read with the decoding chosen on val; "
                   "the chosen one trained the row of table 2)\n\n"
                   + comparison.markdown(result["lr_sweep"]))
    total = time.perf_counter() - begin
    notes = (f"Budget: {args.steps} AdamW steps of batch {args.batch_size} per model and data "
             f"set, peak lr {args.lrs + ' (chosen on val)' if args.lrs else args.lr} "
             f"(cosine), preset `{args.preset}`, seed 0, own inputs (scheduled sampling) "
             f"{args.own_inputs:g}, 1 Ray Train "
             f"worker; data: `jobs.render --preset hard`, {args.sequences} sequences of "
             f"12x{args.size}x{args.size} per kind ({', '.join(args.kinds)}; 80/10/10 split); "
             f"rollouts from {args.context} context frames; "
             f"wall time of the comparison (training, evaluation, tables) {wall:.0f} s, of the "
             f"whole benchmark (Ray start and rendering included) {total:.0f} s.")
    values = comparison.psnr_keys(result["quality"], result["teacher_forced"])
    for r in paper:
        values[f"gflops_{r['model']}_paper"] = r["GFLOPs 12x64x64"]
        values[f"mb_{r['model']}_paper"] = r["MB"]
    values.update(context=args.context, own_inputs=args.own_inputs, steps=args.steps,
                  size=args.size, total_s=round(total))
    report("compare", "V-BLT vs ViViT vs UNet-3D, equal budget, rollout protocol (issue 28)",
           tables, notes, f"RESULT compare {key_values(values)}")


def paper_cost_rows(names: list[str]) -> list[dict]:
    """Table 1 rows of each model's `paper` preset at the paper's 12x64x64 (1 channel)."""
    from framecast import comparison
    from framecast.models import create
    from framecast.models.registry import presets

    shape = (*comparison.PAPER_FRAME_SHAPE, 1)
    return [comparison.cost_row(n, "paper", create(n, "paper"), shape)
            for n in (n.strip() for n in names) if n.strip() and "paper" in presets(n.strip())]


if __name__ == "__main__":
    main()
