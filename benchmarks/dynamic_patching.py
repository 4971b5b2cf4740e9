"""What entropy-driven dynamic patching buys V-BLT (issue 29): static 1x4x4 patches, coarser static
patches and dynamic patching at several entropy thresholds, side by side at an equal training
budget on the hard 2D and 3D data, scored with the comparison protocol (rollouts from the same
context frames, the model's own predictions fed back).

    python benchmarks/dynamic_patching.py --quick          # < 5 minutes on 2 cores
    python benchmarks/dynamic_patching.py                  # the goal's run: < 30 minutes
    python benchmarks/dynamic_patching.py --npz data/hard16.npz --thresholds 1,2,3 --seeds 0,1

Per row and data set: global tokens per clip (the latents the global transformer runs on, all
time slices), forward GFLOPs per sequence (all of it, and the global transformer's alone;
attention counted, a multiply-add = 2; counted clip by clip on test clips, since the patches
depend on the content), training step time, rollout time per clip, and rollout PSNR / SSIM.
Every row trains with the library's loop (`framecast.train.train_loop`) in this process on the
same data, steps, batch, lr, schedule and seeds (`benchmarks/vblt_ablation.py`'s harness); with
several --seeds the scores are means over seeds. Dynamic rows use `vblt:patch=1x4x4,
patching=entropy` with the menu 1x4x4, 1x8x8, 1x16x16, and either an entropy threshold
(`entropy_threshold=T`: a region splits while some pixel has T bits or more) or a budget
(`patch_budget=F`: at most F x 16 patches a slice, the regions holding the most entropy split
first).

The goal: dynamic points dominate the static ones on the FLOPs-PSNR plane, and one of them keeps
rollout PSNR within 0.2 dB of static 1x4x4 at no more than half its global-transformer FLOPs.
The benchmark names as "dynamic" the row with the best mean PSNR among those at <= 0.5x
static 1x4x4's global FLOPs on every data set (else the cheapest), and draws the plane
(benchmarks/figures/dynamic_patching.png).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.lib.cli import comma_items, new_parser, parse_kinds  # noqa: E402
from benchmarks.lib.report import key_values, markdown_table, report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIGURE = ROOT / "benchmarks" / "figures" / "dynamic_patching.png"
QUICK_FIGURE = FIGURE.with_name("dynamic_patching_quick.png")  # never over the default run's
STATIC = {"static 1x4x4": "vblt:patch=1x4x4", "static 1x8x8": "vblt:patch=1x8x8"}
DYNAMIC = "vblt:patch=1x4x4,patching=entropy,patch_levels=3,entropy_threshold={}"
BUDGET = "vblt:patch=1x4x4,patching=entropy,patch_levels=3,patch_budget={}"
REFERENCE = "static 1x4x4"
GLOBAL_BLOCK = re.compile(r"^VBLT\.blocks\.\d+$")  # the global transformer's blocks
PSNR_TOLERANCE_DB, FLOPS_FRACTION = 0.2, 0.5  # the goal


def rows_for(thresholds: list[float], budgets: list[float]) -> dict[str, str]:
    """Row label -> `MODEL:KEY=VALUE,...` spec, static rows first."""
    return {**STATIC, **{f"dynamic {t:g} bits": DYNAMIC.format(t) for t in thresholds},
            **{f"dynamic budget {b:g}": BUDGET.format(b) for b in budgets}}


def cost(model, videos) -> dict[str, float]:
    """Mean over `videos` of global tokens per clip, forward GFLOPs per sequence and the global
    transformer's GFLOPs, each clip counted alone (no batch padding)."""
    import numpy as np
    import torch

    from framecast.models.profile import flops_by_module

    tokens, total, blocks = [], [], []
    model.eval()
    for clip in videos:
        video = torch.from_numpy(np.ascontiguousarray(clip[None]))
        counts = flops_by_module(model, video)
        total.append(counts["Global"])
        blocks.append(sum(v for k, v in counts.items() if GLOBAL_BLOCK.match(k)))
        tokens.append(global_tokens(model, video))
    return {"tokens": float(np.mean(tokens)), "gflops": float(np.mean(total)) / 1e9,
            "gflops_global": float(np.mean(blocks)) / 1e9}


def global_tokens(model, video) -> int:
    """Latents the global transformer runs on for one clip (1, T, H, W, C)."""
    import torch

    _, t, h, w, _ = video.shape
    pt, ph, pw = model.cfg.patch
    if model.cfg.patching == "static":
        return (t // pt) * (h // ph) * (w // pw)
    with torch.no_grad():
        selected, _ = model.patch_selection(video)
    return int(sum(int(s.sum()) for s in selected))


def measure(spec, arrays: dict, kind: str, lr: float, seed: int, args: argparse.Namespace
            ) -> dict[str, float]:
    """Train one row on one data set with one seed; its cost, times and rollout scores."""
    import numpy as np

    from benchmarks.vblt_ablation import train_row
    from framecast import comparison

    args.seed = seed
    model, val_psnr, seconds = train_row(spec, arrays, kind, lr, args)
    test = arrays[f"{kind}_test"]
    start = time.perf_counter()
    ahead = comparison.rollout_metrics(model, test, args.context, batch_size=args.batch_size)
    rollout_s = (time.perf_counter() - start) / len(test)
    return {**cost(model, test[:args.cost_sequences]), "step_ms": 1e3 * seconds / args.steps,
            "rollout_ms": 1e3 * rollout_s, "val_psnr": val_psnr,
            "psnr": float(np.mean(ahead["psnr"])), "ssim": float(np.mean(ahead["ssim"])),
            "psnr_last": float(ahead["psnr"][-1])}


def mean_over_seeds(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}


def choose_dynamic(results: dict, kinds: list[str], labels: list[str]) -> str:
    """The dynamic row the benchmark reports: best mean PSNR gap to static 1x4x4 among those at
    <= FLOPS_FRACTION of its global FLOPs on every data set; else the cheapest."""
    def ratio(label: str) -> float:
        return max(results[k][label]["gflops_global"] / results[k][REFERENCE]["gflops_global"]
                   for k in kinds)

    def gap(label: str) -> float:
        return sum(results[k][label]["psnr"] - results[k][REFERENCE]["psnr"]
                   for k in kinds) / len(kinds)

    cheap = [label for label in labels if ratio(label) <= FLOPS_FRACTION]
    return max(cheap, key=gap) if cheap else min(labels, key=ratio)


def dominated(results: dict, kind: str, statics: list[str], dynamics: list[str]) -> list[str]:
    """Static rows of `kind` that some dynamic row matches or beats on both global FLOPs and
    rollout PSNR."""
    res = results[kind]
    return [s for s in statics if any(
        res[d]["gflops_global"] <= res[s]["gflops_global"] and res[d]["psnr"] >= res[s]["psnr"]
        for d in dynamics)]


def plot(results: dict, kinds: list[str], copy_psnr: dict[str, float], statics: list[str],
         dynamics: list[str], path: Path) -> None:
    """Rollout PSNR against global-transformer GFLOPs per sequence, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(kinds), figsize=(5.2 * len(kinds), 4.0), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        res = results[kind]
        ref = res[REFERENCE]
        ax.axvline(FLOPS_FRACTION * ref["gflops_global"], color="grey", linestyle=":",
                   linewidth=0.9, label="half of static 1x4x4's FLOPs")
        ax.axhspan(ref["psnr"] - PSNR_TOLERANCE_DB, ref["psnr"] + PSNR_TOLERANCE_DB,
                   color="tab:green", alpha=0.12, label="static 1x4x4 +-0.2 dB")
        ax.axhline(copy_psnr[kind], color="black", linestyle="--", linewidth=0.8,
                   label="copy-last")
        ordered = sorted(dynamics, key=lambda d: res[d]["gflops_global"])
        ax.plot([res[d]["gflops_global"] for d in ordered], [res[d]["psnr"] for d in ordered],
                "o-", color="tab:red", label="dynamic")
        for d in dynamics:
            ax.annotate(d.removeprefix("dynamic "), (res[d]["gflops_global"], res[d]["psnr"]),
                        fontsize=7, xytext=(3, 3), textcoords="offset points")
        for s in statics:
            ax.plot(res[s]["gflops_global"], res[s]["psnr"], "s", color="tab:blue")
            ax.annotate(s, (res[s]["gflops_global"], res[s]["psnr"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
        ax.set_xlabel("global transformer GFLOPs per sequence")
        ax.set_ylabel("rollout PSNR (dB)")
        ax.set_title(f"{kind}: dynamic against static patches", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = new_parser(__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="< 5 minutes: 2D, 150 steps, one seed, budget 0.5, 160 sequences")
    parser.add_argument("--thresholds", default=None,
                        help="dynamic rows by entropy threshold in bits, [0, 8) (default 2.5; "
                             "none with --quick)")
    parser.add_argument("--budgets", default=None,
                        help="dynamic rows by patch budget, a fraction of static 1x4x4's "
                             "patches per slice in (0, 1] (default 0.5,0.7; 0.5 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="default 300 (150 with --quick)")
    parser.add_argument("--batch-size", type=int, default=8, help="default 8")
    parser.add_argument("--lr", type=float, default=5e-3, help="peak lr of every row (5e-3)")
    parser.add_argument("--seeds", default=None,
                        help="seeds, comma-separated; scores are means (default 0,1; 0 with "
                             "--quick)")
    parser.add_argument("--sequences", type=int, default=None,
                        help="sequences rendered per data set (default 600; 160 with --quick)")
    parser.add_argument("--size", type=int, default=16, help="frame size (default 16)")
    parser.add_argument("--kinds", default=None, help="default 2d,3d (2d with --quick)")
    parser.add_argument("--context", type=int, default=4, help="rollout context (default 4)")
    parser.add_argument("--val-sequences", type=int, default=32,
                        help="val clips that choose each row's decoding (default 32)")
    parser.add_argument("--cost-sequences", type=int, default=8,
                        help="test clips whose FLOPs are counted (default 8)")
    parser.add_argument("--npz", default="", help="data from benchmarks/compare.py --export")
    parser.add_argument("--figure", default=None,
                        help=f"where the plane is drawn (default {FIGURE.relative_to(ROOT)}; "
                             f"with --quick {QUICK_FIGURE.relative_to(ROOT)})")
    args = parser.parse_args()
    args.figure = args.figure or str(QUICK_FIGURE if args.quick else FIGURE)
    args.steps = args.steps or (150 if args.quick else 300)
    args.sequences = args.sequences or (160 if args.quick else 600)
    args.kinds = parse_kinds(args.kinds or ("2d" if args.quick else "2d,3d"), parser)
    try:
        args.thresholds = [float(x) for x in comma_items(args.thresholds if args.thresholds
                                                         is not None else (
            "" if args.quick else "2.5"))]
        args.budgets = [float(x) for x in comma_items(args.budgets if args.budgets is not None
                                                      else ("0.5" if args.quick else
                                                            "0.5,0.7"))]
        args.seeds = [int(x) for x in comma_items(args.seeds or ("0" if args.quick else "0,1"))]
    except ValueError:
        parser.error("--thresholds, --budgets and --seeds take numbers, comma-separated")
    if not args.thresholds + args.budgets or not args.seeds:
        parser.error("give at least one threshold or budget, and one seed")
    if any(b <= 0 for b in args.budgets):
        parser.error(f"--budgets {args.budgets}: each must be in (0, 1]")
    if args.steps < 1 or args.lr <= 0 or not 1 <= args.context < 12 or args.cost_sequences < 1:
        parser.error("--steps >= 1, --lr > 0, --context in 1..11 and --cost-sequences >= 1")
    if args.npz and not Path(args.npz).is_file():
        parser.error(f"--npz {args.npz}: no such file")
    from benchmarks.vblt_ablation import parse_row
    from framecast.config import ConfigError
    from framecast.models import registry

    args.specs = {}
    try:  # every row's config against the frames, before anything renders or trains
        for label, spec in rows_for(args.thresholds, args.budgets).items():
            args.specs[label] = parse_row(spec)
            registry.model_config("vblt", "small", frame_shape=(12, args.size, args.size, 1),
                                  **args.specs[label][1])
    except ConfigError as err:
        parser.error(str(err))
    return args


def main() -> None:
    begin = time.perf_counter()
    args = parse_args()
    import numpy as np

    from benchmarks.vblt_ablation import load_data
    from framecast import comparison

    with tempfile.TemporaryDirectory() as tmp:
        arrays = load_data(args, Path(tmp))
    labels = list(args.specs)
    statics, dynamics = labels[:len(STATIC)], labels[len(STATIC):]
    results: dict[str, dict[str, dict[str, float]]] = {}
    copy_psnr, copy_ssim = {}, {}
    for kind in args.kinds:
        held = comparison.hold_last_metrics(arrays[f"{kind}_test"], args.context)
        copy_psnr[kind], copy_ssim[kind] = (float(np.mean(held["psnr"])),
                                            float(np.mean(held["ssim"])))
        results[kind] = {}
        for label in labels:
            runs = [measure(args.specs[label], arrays, kind, args.lr, seed, args)
                    for seed in args.seeds]
            results[kind][label] = row = mean_over_seeds(runs)
            seeds = ", ".join(f"{r['psnr']:.2f}" for r in runs)
            print(f"{kind} {label}: {row['tokens']:.0f} tokens/clip, {row['gflops']:.3f} GFLOPs "
                  f"({row['gflops_global']:.4f} global), rollout PSNR {row['psnr']:.2f} dB "
                  f"(seeds: {seeds}), {row['step_ms']:.0f} ms/step", flush=True)
    best = choose_dynamic(results, args.kinds, dynamics)
    table_rows = []
    for kind in args.kinds:
        res, ref = results[kind], results[kind][REFERENCE]
        table_rows.append([kind, "copy-last", "", "", "", "", "", "", copy_psnr[kind],
                           copy_ssim[kind], ""])
        for label in labels:
            r = res[label]
            table_rows.append([
                kind, label + (" (reported)" if label == best else ""), round(r["tokens"]),
                r["gflops"], r["gflops_global"], r["gflops_global"] / ref["gflops_global"],
                round(r["step_ms"]), round(r["rollout_ms"]), r["psnr"], r["ssim"],
                r["psnr"] - ref["psnr"]])
    table = markdown_table(
        ["data", "patching", "global tokens/clip", "GFLOPs/seq", "global GFLOPs/seq",
         "global FLOPs vs 1x4x4", "train ms/step", "rollout ms/clip", "rollout PSNR",
         "rollout SSIM", "PSNR vs 1x4x4"], table_rows)
    plot(results, args.kinds, copy_psnr, statics, dynamics, Path(args.figure))
    met = all(results[k][best]["gflops_global"] <= FLOPS_FRACTION
              * results[k][REFERENCE]["gflops_global"]
              and results[k][best]["psnr"] >= results[k][REFERENCE]["psnr"] - PSNR_TOLERANCE_DB
              for k in args.kinds)
    beaten = {k: dominated(results, k, statics, dynamics) for k in args.kinds}
    values: dict[str, float | int | str] = {}
    for tag, label in (("static", REFERENCE), ("dynamic", best)):
        for key in ("tokens", "gflops", "gflops_global"):
            values[f"{key}_{tag}"] = float(np.mean([results[k][label][key] for k in args.kinds]))
    for kind in args.kinds:
        values[f"psnr_static_{kind}"] = results[kind][REFERENCE]["psnr"]
        values[f"psnr_dynamic_{kind}"] = results[kind][best]["psnr"]
    values.update(dynamic=best.removeprefix("dynamic ").replace(" ", "_"), goal_met=int(met),
                  statics_dominated=sum(len(v) for v in beaten.values()),
                  statics=len(statics) * len(args.kinds), total_s=round(time.perf_counter()
                                                                         - begin))
    total = values["total_s"]
    notes = (
        f"Budget per row, data set and seed: {args.steps} AdamW steps of batch "
        f"{args.batch_size} at lr {args.lr:g}, seeds {','.join(map(str, args.seeds))} (scores "
        f"are means over seeds), V-BLT `small` with the row's patching; data `jobs.render "
        f"--preset hard`, 12x{args.size}x{args.size} ("
        f"{args.npz or f'{args.sequences} sequences rendered'}); rollouts from {args.context} "
        f"context frames on the whole test split, decoding chosen by val rollouts; FLOPs and "
        f"tokens counted clip by clip on {args.cost_sequences} test clips (a multiply-add = 2, "
        f"attention counted). Reported dynamic row: `{best}`. Goal (within "
        f"{PSNR_TOLERANCE_DB} dB of static 1x4x4 at <= {FLOPS_FRACTION}x its global FLOPs, on "
        f"every data set): {'met' if met else 'not met'}. Static rows matched or beaten on both "
        f"axes by a dynamic row: " + "; ".join(f"{k}: {', '.join(v) or 'none'}"
                                                for k, v in beaten.items())
        + f". Figure: benchmarks/figures/{Path(args.figure).name}. Wall time {total:.0f} s.")
    report("dynamic_patching", "Entropy-driven dynamic patching against static patches, "
           "rollout protocol (issue 29)", table, notes,
           f"RESULT dynamic_patching {key_values(values)}")


if __name__ == "__main__":
    main()
