"""The V-BLT paper's comparison at paper scale on one GPU: V-BLT, ViViT and UNet-3D `paper` presets
on 12x64x64 sequences, tables 1 and 2 written as files. Needs PyTorch, numpy, scikit-image and
matplotlib only: no Ray, MLflow or PyVista.

    # where PyVista is (this repository's machines): render and pack the data, <= ~60 MB
    python benchmarks/compare.py --export data/compare-paper.npz --sequences 2000 --size 64
    # on the GPU machine (the defaults, 3000 steps: ~21 min on an H200 by its probe's step times)
    python benchmarks/compare_gpu.py --npz data/compare-paper.npz --out compare-gpu
    # a lease shorter than that: probe step times, then the most equal steps that fit 360 s
    python benchmarks/compare_gpu.py --npz data/compare-paper.npz --budget-s 360
    python benchmarks/compare_gpu.py --quick          # CPU, seconds: tiny presets, made-up data
    # one more row: V-BLT `paper` with config overrides, beside (or, with --models "", alone)
    python benchmarks/compare_gpu.py --npz data/compare-paper.npz --models "" --steps 600 \
        --variant vblt_ob=vblt:init=ordinal,byte_skip=true

Every model trains with the library's own loop (`framecast.train.train_loop`, bf16 autocast on a
GPU) at the same budget: steps, batch, AdamW, lr schedule, seed. Scoring and tables are
`framecast.comparison`'s, as in `jobs.compare`: table 2 is the rollout protocol (every model
given the same --context frames of each test clip, the rest predicted from its own outputs,
copy-last holding the last context frame), then PSNR per frame ahead and the teacher-forced
table; each model is read with the decoding (trimmed mean, mean, argmax) whose rollouts score
best on val, as `jobs.compare` chooses it. The .npz holds uint8 arrays `<kind>_<split>` of shape
(N, T, H, W, C), kind 2d/3d.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))  # no install needed

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.lib.cli import model_spec, new_parser, parse_kinds  # noqa: E402
from framecast import comparison  # noqa: E402
from framecast.models import create  # noqa: E402
from framecast.predict import adopt_best_decode, describe_decode_choice  # noqa: E402
from framecast.train import OptimConfig, make_optimizer, train_loop  # noqa: E402

MODELS = ("vblt", "vivit", "unet3d")
Variants = dict[str, tuple[str, dict]]  # row label -> (registry model, config overrides)


def parse_variant(text: str) -> tuple[str, tuple[str, dict]]:
    """'vblt_recipe=vblt:init=ordinal,byte_skip=true' -> ('vblt_recipe', ('vblt', overrides));
    raises ValueError (one line) on a bad label, an unknown model, key or value."""
    from framecast.config import ConfigError
    from framecast.models import registry

    label, sep, spec = text.partition("=")
    label = label.strip()
    if not sep or not re.fullmatch(r"[A-Za-z0-9_]+", label) or label in registry.available_models():
        raise ValueError(f"--variant {text!r}: give LABEL=MODEL:KEY=VALUE,... with a LABEL of "
                         "letters, digits and _ that names no registered model")
    try:
        return label, model_spec(spec)
    except (ConfigError, KeyError, ValueError) as err:
        raise ValueError(f"--variant {text!r}: {err}") from None


def build(label: str, preset: str, variants: Variants | None = None, **kwargs) -> torch.nn.Module:
    """The model a table row names: a registered model, or a variant's model with its
    overrides, at `preset`."""
    name, overrides = (variants or {}).get(label, (label, {}))
    return create(name, preset, **overrides, **kwargs)


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
              optim: OptimConfig, eval_every: int, device: torch.device, seed: int,
              variants: Variants | None = None) -> tuple[torch.nn.Module, list[dict], float]:
    """Train one model; returns (model, learning curve, seconds)."""
    torch.manual_seed(seed)
    frame_shape = tuple(train.shape[1:])
    model = build(name, preset, variants, channels=frame_shape[-1]).to(device)
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


def probe_step_seconds(name: str, preset: str, train: np.ndarray, optim: OptimConfig,
                       device: torch.device, seed: int, steps: int = 10,
                       variants: Variants | None = None) -> float:
    """Seconds per training step of `name` as `train_one` runs it: a few warm-up steps (kernel
    choice, allocator), then `steps` timed ones. Includes the end-of-run checkpoint save, so it
    errs long."""
    torch.manual_seed(seed)
    model = build(name, preset, variants, channels=train.shape[-1]).to(device)
    optimizer = make_optimizer(model, optim)
    data = batches(train, optim.batch_size, device, seed)
    warm = 3

    def quiet(_metrics: dict[str, float], _checkpoint: str | None) -> None:
        pass

    def cfg(total: int) -> OptimConfig:
        return dataclasses.replace(optim, steps=total, log_every=10 ** 9)

    bf16 = device.type == "cuda"
    train_loop(model, optimizer, data, cfg(warm), quiet, device=device, bf16=bf16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    train_loop(model, optimizer, data, cfg(warm + steps), quiet, start_step=warm, device=device,
               bf16=bf16)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def plan_steps(step_seconds: dict[str, float], kinds: int, budget_s: float, max_steps: int,
               multiple: int = 50) -> int:
    """The one step count every model trains for, so that all models on all `kinds` data sets
    fit in `budget_s` seconds of training: rounded down to `multiple`, at most `max_steps`."""
    per_step = kinds * sum(step_seconds.values())
    steps = int(budget_s / per_step) if per_step > 0 else max_steps
    steps = steps // multiple * multiple if steps >= multiple else steps
    if steps < 1:
        raise ValueError(f"a budget of {budget_s:.0f} s does not fit one step of every model "
                         f"({per_step:.2f} s)")
    return min(steps, max_steps)


def kind_tables(kind: str, context: int, held: dict, copy: dict, frames: str, ahead: dict,
                scores: dict, steps_of: dict) -> tuple[list, list, list]:
    """One data set's rollout rows, PSNR-per-frame-ahead rows and teacher-forced rows."""
    return (comparison.rollout_rows(kind, ahead, held, context, steps_of),
            comparison.horizon_rows(kind, ahead, held),
            comparison.quality_rows(kind, scores, copy, frames))


def run(arrays: dict[str, np.ndarray], *, models: tuple[str, ...], preset: str, steps: int,
        batch_size: int, lr: float, eval_every: int, val_sequences: int, out: Path,
        device: torch.device, context: int = 4, seed: int = 0, budget_s: float | None = None,
        variants: Variants | None = None) -> dict:
    """Train and score every model on every kind in `arrays`; writes the tables to `out` after
    every model (a run cut short keeps what it finished). With `budget_s`, each model's step time
    is probed first and `steps` shrinks so that all training fits in that many seconds.
    `variants` names rows of `models` that are a registered model with config overrides."""
    kinds = sorted({k.split("_")[0] for k in arrays})
    frames = min(arrays[f"{k}_test"].shape[1] for k in kinds)
    least = {n: build(n, preset, variants).context_frames for n in models}
    if not max(least.values()) <= context < frames:
        raise ValueError(f"--context {context}: give {max(least.values())}..{frames - 1} (the "
                         f"models' least context frames: {least}; clips of {frames} frames)")

    def optim_for(n: int) -> OptimConfig:
        return OptimConfig(steps=n, batch_size=batch_size, lr=lr,
                           warmup_steps=min(100, n // 10), log_every=max(n // 20, 1),
                           checkpoint_every=10 ** 9)  # the loop saves a (temporary) one at the end

    probe = {}
    if budget_s is not None:
        first = arrays[f"{kinds[0]}_train"]
        for name in models:
            probe[name] = probe_step_seconds(name, preset, first, optim_for(steps), device, seed,
                                             variants=variants)
            print(f"probe: {name} ({preset}) {probe[name] * 1000:.1f} ms per step of batch "
                  f"{batch_size}", flush=True)
        steps = plan_steps(probe, len(kinds), budget_s, steps)
        eval_every = min(eval_every, max(steps // 5, 1))
        print(f"budget {budget_s:.0f} s of training: {steps} steps per model and data set",
              flush=True)
    optim = optim_for(steps)
    budget = {"models": models, "preset": preset, "steps": steps, "batch_size": batch_size,
              "lr": lr, "eval_every": eval_every, "budget_s": budget_s, "seed": seed,
              "probe_s_per_step": probe,
              "variants": {k: {"model": m, **o} for k, (m, o) in (variants or {}).items()},
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "train_seconds": {}, "failed": {}}
    cost, quality, curves, seconds = [], [], [], budget["train_seconds"]
    horizon, teacher = [], []
    for kind in kinds:
        train, val, test = (arrays[f"{kind}_{s}"] for s in ("train", "val", "test"))
        val = val[:val_sequences]
        shared = comparison.common_context([build(n, preset, variants) for n in models])
        copy = comparison.copy_last_score(test, shared)
        held = comparison.hold_last_metrics(test, context)
        frames = f"{shared}..{test.shape[1] - 1}"
        scores, ahead, steps_of = {}, {}, {}
        tables = functools.partial(kind_tables, kind, context, held, copy, frames, ahead, scores,
                                   steps_of)  # of the models scored so far
        for name in models:
            print(f"{kind}: training {name} ({preset}) {steps} steps of batch {batch_size}",
                  flush=True)
            try:
                model, curve, secs = train_one(name, preset, train, val, shared, optim,
                                               eval_every, device, seed, variants)
                seconds[f"{kind}_{name}"] = secs
                curves += [{"data": kind, "model": name, **c} for c in curve]
                # read test the way val rollouts read best (jobs.compare does the same)
                best, by = adopt_best_decode(model, val, batch_size=batch_size, context=context)
                budget.setdefault("decode", {})[f"{kind}_{name}"] = {"chosen": best, **by}
                print(f"{kind}: {name} {describe_decode_choice(best, by)}", flush=True)
                ahead[name] = comparison.rollout_metrics(model, test, context,
                                                         batch_size=batch_size)
                scores[name] = comparison.score(model, test, shared, batch_size=batch_size)
                steps_of[name] = model.frames_per_step
                if not any(r["model"] == name for r in cost):
                    cost.append(comparison.cost_row(name, preset, model.cpu(),
                                                    tuple(test.shape[1:])))
                del model
            except Exception as err:  # noqa: BLE001 - one model's failure (say OOM) spares the rest
                budget["failed"][f"{kind}_{name}"] = repr(err)
                print(f"{kind}: {name} failed: {err!r}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            rows, ahead_rows, forced = tables()
            comparison.write_tables(out, cost, quality + rows, curves, (), horizon + ahead_rows,
                                    teacher + forced)
            (out / "budget.json").write_text(json.dumps(budget, indent=1))
        rows, ahead_rows, forced = tables()
        quality, horizon, teacher = quality + rows, horizon + ahead_rows, teacher + forced
        # Each data set's rows as soon as they exist: a run cut short by its lease keeps them
        # in the log even when the files under --out do not come back.
        print(f"\n{kind}: table 2 so far (test split, rollouts from {context} context frames)\n"
              f"{comparison.markdown(rows)}\n\nPSNR per frame ahead\n"
              f"{comparison.markdown(ahead_rows)}\n\nteacher-forced\n"
              f"{comparison.markdown(forced)}", flush=True)
    print(f"\nTable 1 ({comparison.FLOPS_CONVENTION})\n" + comparison.markdown(cost))
    print("\n".join(comparison.convention_notes(cost)))
    print(f"\nTable 2 (test split, rollouts from {context} context frames)\n"
          + comparison.markdown(quality))
    print("\nRollout PSNR per frame ahead\n" + comparison.markdown(horizon))
    print("\nTeacher-forced (test split)\n" + comparison.markdown(teacher))
    return {"cost": cost, "quality": quality, "curves": curves, "seconds": seconds,
            "steps": steps, "horizon": horizon, "teacher_forced": teacher}


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--npz", default="",
                        help="pre-rendered data (see above); needed unless --quick")
    parser.add_argument("--quick", "--smoke", dest="smoke", action="store_true",
                        help="CPU smoke run (seconds, what `make bench` runs): tiny presets, "
                             "4 steps, made-up 6x16x16 data")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=MODEL:K=V,...",
                        help="one more row: a registered model with config overrides, e.g. "
                             "vblt_recipe=vblt:init=ordinal,byte_skip=true (repeatable; rows "
                             "follow --models)")
    parser.add_argument("--preset", default="paper", help="model preset (default paper)")
    parser.add_argument("--steps", type=int, default=3000, help="steps per model (default 3000)")
    parser.add_argument("--batch-size", type=int, default=32, help="default 32")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak AdamW lr (default 1e-3)")
    parser.add_argument("--eval-every", type=int, default=500, help="steps per val point")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="seconds of training for all models and data sets together: probe "
                             "each model's step time, then train every one for the same number "
                             "of steps (at most --steps) that fits")
    parser.add_argument("--val-sequences", type=int, default=64, help="val sequences per point")
    parser.add_argument("--context", type=int, default=4,
                        help="frames every model is given before its rollout (default 4; 2 with "
                             "--quick)")
    parser.add_argument("--kinds", default="2d,3d",
                        help="data sets of the .npz to train and score on (default 2d,3d)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the models' init and the batches' order (default 0)")
    parser.add_argument("--out", default="compare-gpu", help="folder for the tables")
    args = parser.parse_args(argv)
    kinds = parse_kinds(args.kinds, parser)
    if args.smoke:
        arrays = smoke_data()
        args.preset, args.steps, args.batch_size, args.eval_every = "tiny", 4, 4, 2
        args.context = min(args.context, 2)  # 6-frame clips
    elif args.npz:
        if not Path(args.npz).is_file():
            parser.error(f"--npz {args.npz}: no such file (write one with benchmarks/compare.py "
                         "--export)")
        with np.load(args.npz) as npz:
            arrays = {k: npz[k] for k in npz.files}
    else:
        parser.error("give --npz FILE (or --quick)")
    missing = [k for k in kinds if f"{k}_test" not in arrays]
    if missing:
        parser.error(f"--kinds: {', '.join(missing)} not in the data ({', '.join(arrays)})")
    arrays = {k: v for k, v in arrays.items() if k.split("_")[0] in kinds}
    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    try:
        variants = dict(parse_variant(v) for v in args.variant)
    except ValueError as err:
        parser.error(str(err))
    models += tuple(variants)
    if not models:
        parser.error("--models and --variant name no model to train")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the 3D conv kernels
    start = time.perf_counter()
    try:
        result = run(arrays, models=models, preset=args.preset, steps=args.steps,
                     batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                     val_sequences=args.val_sequences, out=Path(args.out), device=device,
                     context=args.context, seed=args.seed, budget_s=args.budget_s,
                     variants=variants)
    except ValueError as err:  # a budget too small for one step, an unknown model or preset
        print(f"compare_gpu: error: {err}", file=sys.stderr)
        return 2
    psnr = comparison.psnr_keys(result["quality"], result["teacher_forced"])
    print(f"wall {time.perf_counter() - start:.0f} s; tables in {args.out}")
    print("RESULT compare_gpu " + " ".join(f"{k}={v:.2f}" for k, v in psnr.items())
          + f" context={args.context} steps={result['steps']} seed={args.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
