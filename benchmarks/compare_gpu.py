"""The V-BLT paper's comparison at paper scale on one GPU: V-BLT, ViViT and UNet-3D `paper` presets
on 12x64x64 sequences, tables 1 and 2 written as files. Needs PyTorch, numpy, scikit-image and
matplotlib only: no Ray, MLflow or PyVista.

    # where PyVista is (this repository's machines): render and pack the data, <= ~60 MB
    python benchmarks/compare.py --export data/compare-paper.npz --sequences 2000 --size 64
    # on the GPU machine (H100: sized for ~25 minutes with the defaults)
    python benchmarks/compare_gpu.py --npz data/compare-paper.npz --out compare-gpu
    python benchmarks/compare_gpu.py --quick          # CPU, seconds: tiny presets, made-up data

Every model trains with the library's own loop (`framecast.train.train_loop`, bf16 autocast on a
GPU) at the same budget: steps, batch, AdamW, lr schedule, seed. Scoring and tables are
`framecast.comparison`'s, as in `jobs.compare`: every model and copy-last-frame on the same test
frames. The .npz holds uint8 arrays `<kind>_<split>` of shape (N, T, H, W, C), kind 2d/3d.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # no install needed

import numpy as np  # noqa: E402
import torch  # noqa: E402

from framecast import comparison  # noqa: E402
from framecast.models import create  # noqa: E402
from framecast.train import OptimConfig, make_optimizer, train_loop  # noqa: E402

MODELS = ("vblt", "vivit", "unet3d")


def smoke_data(kinds: tuple[str, ...] = ("2d", "3d"), n: int = 12, frames: int = 6,
               size: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Made-up data of the .npz layout for the CPU smoke mode: a bright square per sequence
    moving a random whole number of pixels per frame (a different speed range per kind)."""
    rng = np.random.default_rng(seed)
    out = {}
    for kind, split in itertools.product(kinds, ("train", "val", "test")):
        count = n if split == "train" else max(n // 6, 2)
        video = np.zeros((count, frames, size, size, 1), dtype=np.uint8)
        for i in range(count):
            y, x = rng.integers(0, size - 4, 2)
            vy, vx = rng.integers(-1 if kind == "2d" else -2, 2 if kind == "2d" else 3, 2)
            for t in range(frames):
                yy, xx = (y + vy * t) % (size - 4), (x + vx * t) % (size - 4)
                video[i, t, yy:yy + 4, xx:xx + 4] = 220
        out[f"{kind}_{split}"] = video
    return out


def batches(videos: np.ndarray, batch_size: int, device: torch.device, seed: int):
    """Shuffled batches (uint8 tensors on `device`) forever, a new order each epoch."""
    rng = np.random.default_rng(seed)
    data = torch.from_numpy(videos).to(device)
    for _ in itertools.count():
        order = torch.from_numpy(rng.permutation(len(videos)))
        for start in range(0, len(videos) - batch_size + 1, batch_size):
            yield data[order[start:start + batch_size].to(device)]


def train_one(name: str, preset: str, train: np.ndarray, val: np.ndarray, context: int,
              optim: OptimConfig, eval_every: int, device: torch.device, seed: int
              ) -> tuple[torch.nn.Module, list[dict], float]:
    """Train one model; returns (model, learning curve, seconds)."""
    torch.manual_seed(seed)
    frame_shape = tuple(train.shape[1:])
    model = create(name, preset, channels=frame_shape[-1]).to(device)
    model.check_data(frame_shape)
    optimizer = make_optimizer(model, optim)
    curve: list[dict] = []

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        s = comparison.score(m, val, context, batch_size=optim.batch_size)
        return {"val_psnr": s["psnr"], "val_ssim": s["ssim"]}

    def report(metrics: dict[str, float], _checkpoint: str | None) -> None:
        if "val_psnr" in metrics:
            curve.append({"step": int(metrics["step"]), "loss": metrics["loss"],
                          "val_psnr": metrics["val_psnr"], "val_ssim": metrics["val_ssim"]})
            print(f"  {name} step {int(metrics['step'])} loss {metrics['loss']:.4f} "
                  f"val PSNR {metrics['val_psnr']:.2f}", flush=True)

    start = time.perf_counter()
    train_loop(model, optimizer, batches(train, optim.batch_size, device, seed), optim, report,
               device=device, bf16=device.type == "cuda", evaluate=evaluate,
               eval_every=eval_every)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return model.eval(), curve, time.perf_counter() - start


def run(arrays: dict[str, np.ndarray], *, models: tuple[str, ...], preset: str, steps: int,
        batch_size: int, lr: float, eval_every: int, val_sequences: int, out: Path,
        device: torch.device, seed: int = 0) -> dict:
    """Train and score every model on every kind in `arrays`; writes the tables to `out`."""
    optim = OptimConfig(steps=steps, batch_size=batch_size, lr=lr,
                        warmup_steps=min(100, steps // 10), log_every=max(steps // 20, 1),
                        checkpoint_every=10 ** 9)  # the loop saves a (temporary) one at the end
    kinds = sorted({k.split("_")[0] for k in arrays})
    cost, quality, curves, seconds = [], [], [], {}
    for kind in kinds:
        train, val, test = (arrays[f"{kind}_{s}"] for s in ("train", "val", "test"))
        val = val[:val_sequences]
        probe = [create(n, preset) for n in models]
        context = comparison.common_context(probe)
        scores = {}
        for name in models:
            print(f"{kind}: training {name} ({preset}) {steps} steps of batch {batch_size}",
                  flush=True)
            model, curve, secs = train_one(name, preset, train, val, context, optim,
                                           eval_every, device, seed)
            seconds[f"{kind}_{name}"] = secs
            curves += [{"data": kind, "model": name, **c} for c in curve]
            scores[name] = comparison.score(model, test, context, batch_size=batch_size)
            if kind == kinds[0]:
                cost.append(comparison.cost_row(name, preset, model.cpu(), tuple(test.shape[1:])))
            del model
        quality += comparison.quality_rows(kind, scores, comparison.copy_last_score(test, context),
                                           f"{context}..{test.shape[1] - 1}")
    comparison.write_tables(out, cost, quality, curves)
    (out / "budget.json").write_text(json.dumps({
        "models": models, "preset": preset, "steps": steps, "batch_size": batch_size, "lr": lr,
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "train_seconds": seconds}, indent=1))
    print("\nTable 1\n" + comparison.markdown(cost))
    print("\nTable 2 (test split)\n" + comparison.markdown(quality))
    return {"cost": cost, "quality": quality, "curves": curves, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", default="", help="pre-rendered data (see above)")
    parser.add_argument("--quick", "--smoke", dest="smoke", action="store_true",
                        help="CPU smoke run (seconds, what `make bench` runs): tiny presets, "
                             "4 steps, made-up 6x16x16 data")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--preset", default="paper", help="model preset (default paper)")
    parser.add_argument("--steps", type=int, default=3000, help="steps per model (default 3000)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW lr (default 1e-3)")
    parser.add_argument("--eval-every", type=int, default=500, help="steps per val point")
    parser.add_argument("--val-sequences", type=int, default=64, help="val sequences per point")
    parser.add_argument("--out", default="compare-gpu", help="folder for the tables")
    args = parser.parse_args(argv)
    if args.smoke:
        arrays = smoke_data()
        args.preset, args.steps, args.batch_size, args.eval_every = "tiny", 4, 4, 2
    elif args.npz:
        with np.load(args.npz) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        parser.error("give --npz FILE (or --quick)")
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    start = time.perf_counter()
    result = run(arrays, models=models, preset=args.preset, steps=args.steps,
                 batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                 val_sequences=args.val_sequences, out=Path(args.out), device=device)
    rows = sorted(result["quality"], key=lambda r: (str(r["data"]), r["model"] == "copy-last"))
    psnr = {f"psnr_{str(r['model']).replace('copy-last', 'copy')}_{r['data']}": r["PSNR"]
            for r in rows}  # models first, copy-last last, per data set
    print(f"wall {time.perf_counter() - start:.0f} s; tables in {args.out}")
    print("RESULT compare_gpu " + " ".join(f"{k}={v:.2f}" for k, v in psnr.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
