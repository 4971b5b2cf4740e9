"""V-BLT vs ViViT vs UNet-3D at an equal CPU budget (the V-BLT paper's tables 1 and 2), on the
"hard" data preset (objects fill the frame, fast spins: copy-last-frame well below the paper's
V-BLT row).

    python benchmarks/compare.py --quick          # < 5 minutes on 2 cores: smoke size, 2D only
    python benchmarks/compare.py --steps 300 --size 32 --sequences 600
    python benchmarks/compare.py --export data/compare-paper.npz --size 64   # for compare_gpu.py

The real path: `jobs.render --preset hard` writes each data set, `jobs.compare` trains every
model through `jobs.train` (Ray Train, 1 worker, same steps/batch/lr/seed) and scores all on the
same test frames against copy-last-frame. Appends both tables, the learning curves and the
paper's numbers to benchmarks/RESULTS.md; the last line is `RESULT compare psnr_<model>_<kind>=..`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import parse_kinds  # noqa: E402
from benchmarks.lib.report import key_values, report  # noqa: E402


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
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke-size budget: < 5 minutes")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per model and data set (default 300; 30 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="default 8")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW lr (default 2e-3)")
    parser.add_argument("--lrs", default="",
                        help="peak lrs to try, comma-separated: each model keeps the one with "
                             "the best final val PSNR (jobs.compare --lrs); default: --lr alone")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences per data set (default 600; 160 with --quick)")
    parser.add_argument("--size", type=int, default=None,
                        help="frame size (default 32; 16 with --quick)")
    parser.add_argument("--models", default="vblt,vivit,unet3d")
    parser.add_argument("--kinds", default=None,
                        help="data sets, comma-separated (default 2d,3d; 2d with --quick: six "
                             "Ray Train fits do not fit in 5 minutes)")
    parser.add_argument("--preset", default="small", help="model preset (default small)")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between val points of the learning curves (default steps/5)")
    parser.add_argument("--export", default="", help="only render and pack an .npz here")
    args = parser.parse_args()
    args.steps = args.steps or (30 if args.quick else 300)
    args.sequences = args.sequences or (160 if args.quick else 600)
    args.size = args.size or (16 if args.quick else 32)
    args.eval_every = args.eval_every or max(args.steps // 5, 1)
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
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, lrs=args.lrs,
            eval_every=args.eval_every, eval_sequences=16, checkpoint_every=args.steps,
            log_every=max(args.steps // 10, 1), out=str(root / "tables"),
            storage=str(root / "ray"), experiment="framecast-benchmarks"))
        wall = time.perf_counter() - start
    from framecast import comparison

    curves = comparison.markdown([{k: r.get(k) for k in ("data", "model", "step", "val_psnr",
                                                          "val_psnr_copy_last", "val_ssim")}
                                  for r in result["curves"]])
    tables = ("Table 1 (size, compute per sequence; paper columns: the V-BLT paper)\n\n"
              + comparison.markdown(result["cost"])
              + "\n\nTable 2 (test split; every model and copy-last on the same frames)\n\n"
              + comparison.markdown(result["quality"])
              + "\n\nLearning curves (val split, model's own predicted frames, read with the "
              "trimmed mean during training)\n\n" + curves)
    if result["lr_sweep"]:
        tables += ("\n\nLearning rates (final val PSNR, read with the decoding chosen on val; "
                   "the chosen one trained the row of table 2)\n\n"
                   + comparison.markdown(result["lr_sweep"]))
    total = time.perf_counter() - begin
    notes = (f"Budget: {args.steps} AdamW steps of batch {args.batch_size} per model and data "
             f"set, peak lr {args.lrs + ' (chosen on val)' if args.lrs else args.lr} "
             f"(cosine), preset `{args.preset}`, seed 0, 1 Ray Train "
             f"worker; data: `jobs.render --preset hard`, {args.sequences} sequences of "
             f"12x{args.size}x{args.size} per kind ({', '.join(args.kinds)}; 80/10/10 split); "
             f"wall time of the comparison (training, evaluation, tables) {wall:.0f} s, of the "
             f"whole benchmark (Ray start and rendering included) {total:.0f} s.")
    # Models first, copy-last last, per data set (the order).
    rows = sorted(result["quality"], key=lambda r: (str(r["data"]), r["model"] == "copy-last"))
    values = {f"psnr_{str(r['model']).replace('copy-last', 'copy')}_{r['data']}": r["PSNR"]
              for r in rows}
    values.update(steps=args.steps, size=args.size, total_s=round(total))
    report("compare", "V-BLT vs ViViT vs UNet-3D, equal budget (issue 17)", tables, notes,
           f"RESULT compare {key_values(values)}")


if __name__ == "__main__":
    main()
