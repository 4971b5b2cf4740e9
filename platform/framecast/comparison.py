"""The V-BLT paper's comparison, tables 1 and 2: frame predictors side by side, each scored on the
same frames as copy-last-frame. Plain numpy/torch/matplotlib: `jobs.compare` (Ray Train, MLflow)
and `benchmarks/compare_gpu.py` (neither) both build their tables here.

Same frames: a model with a longer context (V-BLT's 4-frame slices) predicts fewer frames than
one with a single context frame (UNet-3D), and early frames are the hardest (least context), so
every model and copy-last are scored on the frames after the longest context among them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from framecast import metrics
from framecast.models.profile import model_cost

PAPER_FRAME_SHAPE = (12, 64, 64)  # (T, H, W) of the paper's sequences: table 1's unit
# Digest section 1: table 1 (MB, GFLOPs per sequence), table 2 (MSE, SSIM, PSNR).
PAPER_COST = {"vblt": (6.5, 51.2), "vivit": (6.5, 59.3), "unet3d": (24.0, 70.4)}
PAPER_QUALITY = {
    ("2d", "vblt"): (0.039, 0.98, 32.3), ("2d", "vivit"): (0.181, 0.87, 20.7),
    ("2d", "unet3d"): (0.125, 0.88, 21.8), ("3d", "vblt"): (0.11, 0.91, 23.4),
    ("3d", "vivit"): (0.19, 0.83, 24.8), ("3d", "unet3d"): (0.2, 0.75, 20.3),
}
COPY_LAST = "copy-last"

Row = dict[str, object]


def common_context(models: Sequence[torch.nn.Module]) -> int:
    """The frames every model is given: scoring starts after the longest context."""
    return max(int(m.context_frames) for m in models)


def score(model: torch.nn.Module, videos: np.ndarray, context: int, *, batch_size: int = 8
          ) -> dict[str, float]:
    """MSE / PSNR / SSIM of `model`'s predictions of frames context..T-1 (the family's trimmed
    mean decoding), averaged over frames and sequences."""
    from framecast.predict import predict

    pred, _, _ = predict(model, videos, batch_size=batch_size)
    pred = pred[:, context - model.context_frames:]  # (N, T - context, H, W, C)
    return metrics.summary(metrics.frame_metrics(pred, videos[:, context:]))


def copy_last_score(videos: np.ndarray, context: int) -> dict[str, float]:
    """The same metrics for copy-last-frame on the same frames."""
    pred = metrics.copy_last_frame(videos, context)
    return metrics.summary(metrics.frame_metrics(pred, videos[:, context:]))


def quality_rows(kind: str, scores: dict[str, dict[str, float]], copy_last: dict[str, float],
                 frames: str) -> list[Row]:
    """Table 2 rows of one data set: copy-last first, then each model, with the paper's."""
    rows = []
    for name, s in [(COPY_LAST, copy_last), *scores.items()]:
        paper = PAPER_QUALITY.get((kind, name), (None, None, None))
        rows.append({"data": kind, "model": name, "frames": frames, "MSE": s["mse"],
                     "SSIM": s["ssim"], "PSNR": s["psnr"], "paper MSE": paper[0],
                     "paper SSIM": paper[1], "paper PSNR": paper[2]})
    return rows


def cost_row(name: str, preset: str, model: torch.nn.Module,
             frame_shape: tuple[int, int, int, int]) -> Row:
    """Table 1 row: parameters, fp32 MB, forward GFLOPs per sequence at the data's frame shape
    (T, H, W, C) and at the paper's 12x64x64."""
    t, h, w, c = frame_shape
    here = model_cost(model, t, h, c, w)
    paper = model_cost(model, *PAPER_FRAME_SHAPE[:2], c, PAPER_FRAME_SHAPE[2])
    ref = PAPER_COST.get(name, (None, None))
    return {"model": name, "preset": preset, "params": int(here["params"]), "MB": here["mb"],
            "sequence": f"{t}x{h}x{w}", "GFLOPs": here["gflops"],
            "GFLOPs 12x64x64": paper["gflops"], "paper MB": ref[0], "paper GFLOPs": ref[1]}


def _fmt(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"
    return str(value)


def markdown(rows: Sequence[Row]) -> str:
    """A Markdown table of rows (the first row's keys are the columns)."""
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def csv_text(rows: Sequence[Row]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in r.items()} for r in rows)
    return buf.getvalue()


def quality_chart(rows: Sequence[Row]) -> bytes:
    """PNG bar chart of table 2: one panel per metric (MSE, SSIM, PSNR), a group of bars per
    data set, copy-last-frame among them; the paper's values as black ticks where it has them."""
    from framecast.viz import _png, _pyplot

    plt = _pyplot()
    kinds = list(dict.fromkeys(str(r["data"]) for r in rows))
    names = list(dict.fromkeys(str(r["model"]) for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.4))
    width = 0.8 / len(names)
    for ax, metric in zip(axes, ("MSE", "SSIM", "PSNR"), strict=True):
        for j, name in enumerate(names):
            xs, ys, papers = [], [], []
            for i, kind in enumerate(kinds):
                row = next((r for r in rows if r["data"] == kind and r["model"] == name), None)
                if row is not None:
                    xs.append(i + (j - (len(names) - 1) / 2) * width)
                    ys.append(float(row[metric]))
                    papers.append(row[f"paper {metric}"])
            ax.bar(xs, ys, width, label=name, color="lightgrey" if name == COPY_LAST else None)
            for x, p in zip(xs, papers, strict=True):
                if p is not None:
                    ax.plot([x - width / 2, x + width / 2], [p, p], color="black", linewidth=1.5)
        ax.set_xticks(range(len(kinds)), kinds)
        ax.set_title(metric + (" (lower is better)" if metric == "MSE" else ""), fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle("test split; black ticks: the V-BLT paper's table 2", fontsize=9)
    return _png(fig)


def curves_chart(curves: Sequence[Row]) -> bytes:
    """PNG of learning curves: val PSNR against step, a line per (data, model)."""
    from framecast.viz import _png, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    keys = list(dict.fromkeys((str(r["data"]), str(r["model"])) for r in curves))
    for kind, name in keys:
        pts = sorted((int(r["step"]), float(r["val_psnr"])) for r in curves
                     if r["data"] == kind and r["model"] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                linestyle="-" if kind == keys[0][0] else "--", label=f"{name} {kind}")
        copy = [float(r["val_psnr_copy_last"]) for r in curves
                if r["data"] == kind and r["model"] == name and r.get("val_psnr_copy_last")]
        if copy:
            ax.axhline(copy[0], color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("step")
    ax.set_ylabel("val PSNR (dB)")
    ax.legend(fontsize=7)
    return _png(fig)


def pick_by_val(candidates: Sequence[tuple[str, float, float | None]]
                ) -> tuple[dict[str, float], list[Row]]:
    """Learning-rate choice on the val split. `candidates` are (entrant key, lr, final val PSNR
    or None when the run has no val point); returns ({key: chosen lr}, one row per candidate).
    The highest val PSNR wins; a tie goes to the smaller lr; a key whose runs all lack a val
    point keeps its smallest lr."""
    best: dict[str, tuple[float, float]] = {}
    for key, lr, val in candidates:
        score = float("-inf") if val is None else val
        if key not in best or (score, -lr) > (best[key][1], -best[key][0]):
            best[key] = (lr, score)
    chosen = {key: lr for key, (lr, _) in best.items()}
    rows = [{"entrant": key, "lr": lr, "final val PSNR": val, "chosen": lr == chosen[key]}
            for key, lr, val in candidates]
    return chosen, rows


def write_tables(out: Path, cost: Sequence[Row], quality: Sequence[Row],
                 curves: Sequence[Row] = (), lr_sweep: Sequence[Row] = ()) -> list[Path]:
    """table1/table2 (and curves, the lr sweep) as Markdown and CSV, plus the PNG charts, in
    `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, rows in (("table1", cost), ("table2", quality), ("curves", curves),
                       ("lr_sweep", lr_sweep)):
        if not rows:
            continue
        for suffix, text in ((".md", markdown(rows) + "\n"), (".csv", csv_text(rows))):
            (path := out / f"{stem}{suffix}").write_text(text)
            written.append(path)
    if quality:
        (path := out / "table2.png").write_bytes(quality_chart(quality))
        written.append(path)
    if curves:
        (path := out / "curves.png").write_bytes(curves_chart(curves))
        written.append(path)
    return written
