"""What makes V-BLT learn: one change per row against today's V-BLT `small` and UNet-3D `small`,
at an equal CPU budget on the hard data, scored with the rollout protocol (issue 28, part 4).

    python benchmarks/vblt_ablation.py --quick            # < 5 minutes on 2 cores
    python benchmarks/vblt_ablation.py                    # the compare budget: 300 steps, 16x16,
                                                          # 600 sequences, lrs 2e-3,5e-3, 2D + 3D
    python benchmarks/vblt_ablation.py --npz data/hard16.npz --rows vblt,init=scaled
    python benchmarks/vblt_ablation.py --row "mine=vblt:init=scaled,rope_base=100"

Every row trains with the library's own loop (`framecast.train.train_loop`, the loop Ray Train
runs in `jobs.compare`), in this process: the same data, steps, batch, schedule and seed. For each
row and data set, each --lrs value is trained and the one whose rollout PSNR on val is best is
kept (the lr "chosen on val"); the kept model is read with the decoding whose val rollouts
score best (as `jobs.compare` does), then rolled out on the test split from --context frames
(the comparison protocol, `framecast.comparison`). A row is `MODEL[:KEY=VALUE,...]`: model
config overrides as `--model-config` takes them, and `own_inputs=F` for the training option of
that name (scheduled sampling). Data: rendered with `jobs.render --preset hard` (Ray Data), or
an .npz written by `benchmarks/compare.py --export`.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import comma_items, model_spec, new_parser, parse_kinds  # noqa: E402
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402

# One change each against the V-BLT `small` preset (and UNet-3D `small` as the bar to reach). The
# `v1` rows are `small` as it was before issue 28's changes, and each change alone on it.
V1 = "init=gpt,encoder_convs=0,decoder_convs=0"
ROWS = {
    "unet3d": "unet3d",
    "unet3d width=18": "unet3d:width=18",  # about V-BLT `small`'s FLOPs per clip
    "vblt": "vblt",
    "v1": f"vblt:{V1}",
    "v1+ordinal": "vblt:encoder_convs=0,decoder_convs=0",
    "v1+convs": "vblt:init=gpt",
    "encoder_convs=0": "vblt:encoder_convs=0",
    "decoder_convs=0": "vblt:decoder_convs=0",
    "init=scaled": "vblt:init=scaled",
    "rope=model": "vblt:rope_width=model",
    "rope_base=100": "vblt:rope_base=100",
    "byte_skip=off": "vblt:byte_skip=false",
    "patch=1x4x4": "vblt:patch=1x4x4",
    "patch=4x4x4": "vblt:patch=4x4x4",
    "own_inputs=0.5": "vblt:own_inputs=0.5",
    "copy_prior=12": "vblt:copy_prior=12",
    "unet3d+own_inputs=0.5": "unet3d:own_inputs=0.5",
}
QUICK_ROWS = ("unet3d", "vblt", "v1")
OPTIM_KEYS = ("own_inputs",)  # row keys that set the training loop, not the model


def parse_row(spec: str) -> tuple[str, dict, dict]:
    """'vblt:init=scaled,own_inputs=0.5' -> (model, model overrides, optim overrides); raises
    ConfigError (one line) on an unknown model, key or value."""
    from framecast.config import ConfigError

    name, _, text = spec.partition(":")
    items = [i for i in comma_items(text)]
    optim = {}
    for item in [i for i in items if i.partition("=")[0].strip() in OPTIM_KEYS]:
        key, _, value = item.partition("=")
        try:
            optim[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"{spec!r}: {key.strip()}={value!r} is not a number") from None
        items.remove(item)
    name, overrides = model_spec(f"{name}:{','.join(items)}")
    return name, overrides, optim


def seed_mean(runs: list[dict], key: str) -> float:
    """The mean of one score over a row's runs, one per seed."""
    return sum(float(r[key]) for r in runs) / len(runs)


def load_data(args: argparse.Namespace, root: Path) -> dict:
    """{'<kind>_<split>': uint8 (N, T, H, W, C)} from --npz or rendered here."""
    import numpy as np

    if args.npz:
        with np.load(args.npz) as npz:
            return {k: npz[k] for k in npz.files if k.split("_")[0] in args.kinds}
    from benchmarks.compare import render_hard
    from framecast import data as fdata
    from framecast.cluster import init_ray

    init_ray()
    arrays = {}
    for kind in args.kinds:
        folder = render_hard(kind, sequences=args.sequences, size=args.size, root=root)
        for split in ("train", "val", "test"):
            arrays[f"{kind}_{split}"] = fdata.load_numpy(folder, split)[0]
    return arrays


def train_row(spec: tuple[str, dict, dict], arrays: dict, kind: str, lr: float,
              args: argparse.Namespace) -> tuple[object, float, float]:
    """(model read with the decoding whose val rollouts score best, their PSNR, training
    seconds)."""
    import torch

    from benchmarks.compare_gpu import batches
    from framecast.models import registry
    from framecast.predict import adopt_best_decode
    from framecast.train import OptimConfig, make_optimizer, train_loop

    name, overrides, optim_overrides = spec
    train, val = arrays[f"{kind}_train"], arrays[f"{kind}_val"][:args.val_sequences]
    optim = OptimConfig(steps=args.steps, batch_size=args.batch_size, lr=lr,
                        log_every=10 ** 9, checkpoint_every=10 ** 9, **optim_overrides)
    torch.manual_seed(args.seed)
    config = registry.model_config(name, "small", frame_shape=tuple(train.shape[1:]),
                                   **overrides)
    model = registry.build(name, config)
    start = time.perf_counter()
    train_loop(model, make_optimizer(model, optim), batches(train, optim.batch_size,
                                                            torch.device("cpu"), args.seed),
               optim, lambda _m, _c: None)
    seconds = time.perf_counter() - start
    best, psnr = adopt_best_decode(model.eval(), val, batch_size=args.batch_size,
                                   context=args.context)
    return model, psnr[best], seconds


def main() -> None:
    begin = time.perf_counter()
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help=f"< 5 minutes: rows {','.join(QUICK_ROWS)}, 2D, 60 steps, one lr")
    parser.add_argument("--rows", default=None,
                        help=f"rows to run, comma-separated (default all: {', '.join(ROWS)})")
    parser.add_argument("--row", action="append", default=[],
                        help="an extra row LABEL=MODEL[:KEY=VALUE,...] (repeatable; no = in LABEL)")
    parser.add_argument("--steps", type=int, default=None, help="default 300 (60 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="default 8")
    parser.add_argument("--lrs", default=None,
                        help="peak lrs, each row keeps the best on val (default 2e-3,5e-3; "
                             "5e-3 with --quick)")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences rendered per data set (default 600; 160 with --quick)")
    parser.add_argument("--size", type=int, default=16, help="frame size (default 16)")
    parser.add_argument("--kinds", default=None, help="default 2d,3d (2d with --quick)")
    parser.add_argument("--context", type=int, default=4, help="rollout context (default 4)")
    parser.add_argument("--val-sequences", type=int, default=32, help="default 32")
    parser.add_argument("--npz", default="", help="data from benchmarks/compare.py --export")
    parser.add_argument("--seeds", default="0",
                        help="seeds, comma-separated (default 0): each row is trained once per "
                             "seed and lr; the table shows the mean over seeds and each seed's "
                             "rollout PSNR (V-BLT's spread between seeds exceeds most effects)")
    args = parser.parse_args()
    args.steps = args.steps or (60 if args.quick else 300)
    args.sequences = args.sequences or (160 if args.quick else 600)
    args.kinds = parse_kinds(args.kinds or ("2d" if args.quick else "2d,3d"), parser)
    try:
        lrs = [float(x) for x in comma_items(args.lrs or ("5e-3" if args.quick else
                                                            "2e-3,5e-3"))]
    except ValueError:
        parser.error(f"--lrs {args.lrs!r}: give numbers, comma-separated")
    if not lrs or min(lrs) <= 0 or args.steps < 1 or not 1 <= args.context < 12:
        parser.error("--lrs must be positive, --steps >= 1 and --context in 1..11")
    try:
        seeds = [int(x) for x in comma_items(args.seeds)]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give integers, comma-separated")
    if not seeds:
        parser.error("--seeds: give at least one seed")
    if args.npz and not Path(args.npz).is_file():
        parser.error(f"--npz {args.npz}: no such file")
    labels = comma_items(args.rows) if args.rows else list(QUICK_ROWS if args.quick else ROWS)
    specs, shown = {}, {}
    from framecast.config import ConfigError

    try:
        for label in labels:
            if label not in ROWS:
                raise ConfigError(f"--rows {label!r} is unknown; known: {', '.join(ROWS)}")
            specs[label], shown[label] = parse_row(ROWS[label]), ROWS[label]
        for extra in args.row:
            label, sep, spec = extra.partition("=")
            if not sep or not label.strip():
                raise ConfigError(f"--row {extra!r}: expected LABEL=MODEL[:KEY=VALUE,...]")
            specs[label.strip()], shown[label.strip()] = parse_row(spec), spec
    except ConfigError as err:
        parser.error(str(err))

    import numpy as np

    from framecast import comparison

    rows, values = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        arrays = load_data(args, Path(tmp))
    for kind in args.kinds:
        test = arrays[f"{kind}_test"]
        held = comparison.hold_last_metrics(test, args.context)
        copy_psnr = float(np.mean(held["psnr"]))
        rows.append([kind, "copy-last", "", "", "", copy_psnr, "", float(np.mean(held["ssim"])),
                     float(held["psnr"][0]), float(held["psnr"][-1]), "", ""])
        values[f"psnr_copy_{kind}"] = copy_psnr
        for label, spec in specs.items():
            runs = []  # per seed: the lr kept on val, its model and scores
            for seed in seeds:
                args.seed = seed
                tried = []
                for lr in lrs:
                    model, val_psnr, secs = train_row(spec, arrays, kind, lr, args)
                    tried.append((val_psnr, -lr, lr, model, secs))
                    print(f"{kind} {label} seed {seed} lr {lr:g}: val rollout PSNR "
                          f"{val_psnr:.2f} dB, {secs:.0f} s", flush=True)
                val_psnr, _, lr, model, secs = max(tried, key=lambda x: x[:2])
                ahead = comparison.rollout_metrics(model, test, args.context,
                                                   batch_size=args.batch_size)
                forced = comparison.score(model, test, args.context, batch_size=args.batch_size)
                runs.append(dict(lr=lr, val=val_psnr, psnr=float(np.mean(ahead["psnr"])),
                                 ssim=float(np.mean(ahead["ssim"])), first=float(ahead["psnr"][0]),
                                 last=float(ahead["psnr"][-1]), forced=forced["psnr"], secs=secs,
                                 step=model.frames_per_step))
                print(f"{kind} {label} seed {seed}: test rollout PSNR {runs[-1]['psnr']:.2f} dB "
                      f"(copy-last {copy_psnr:.2f})", flush=True)
            rows.append([kind, label, ",".join(f"{r['lr']:g}" for r in runs),
                         seed_mean(runs, "val"), runs[0]["step"], seed_mean(runs, "psnr"),
                         " / ".join(f"{r['psnr']:.2f}" for r in runs), seed_mean(runs, "ssim"),
                         seed_mean(runs, "first"), seed_mean(runs, "last"),
                         seed_mean(runs, "forced"), seed_mean(runs, "secs")])
            values[f"psnr_{re.sub(r'[^0-9A-Za-z]+', '_', label)}_{kind}"] = seed_mean(runs, "psnr")
    table = markdown_table(
        ["data", "row", "lr (val) per seed", "val rollout PSNR", "frames/step", "rollout PSNR",
         "per seed", "rollout SSIM", "PSNR +1", f"PSNR +{12 - args.context}", "teacher-forced PSNR",
         "train s"], rows)
    total = time.perf_counter() - begin
    notes = (f"Budget per row and data set: {args.steps} AdamW steps of batch {args.batch_size} "
             f"at each lr of {','.join(f'{x:g}' for x in lrs)} (kept: best val rollout PSNR), "
             f"seeds {','.join(map(str, seeds))} (numbers: means over seeds), `small` "
             f"presets with each row's overrides (Rows, below); data `jobs.render "
             f"--preset hard`, 12x{args.size}x{args.size} "
             f"({args.npz or f'{args.sequences} sequences rendered'}); rollouts from "
             f"{args.context} context frames on the whole test split; teacher-forced PSNR on "
             f"the same frames ({args.context}..11, each from the true frames before it). Rows: "
             + "; ".join(f"`{label}` = `{spec}`" for label, spec in shown.items())
             + f". Wall time {total:.0f} s.")
    values.update(steps=args.steps, context=args.context, seeds=len(seeds),
                  total_s=round(total))
    report("vblt_ablation", "What makes V-BLT learn: one change per row, rollout protocol "
           "(issue 28)", table, notes, f"RESULT vblt_ablation {key_values(values)}")


if __name__ == "__main__":
    main()
