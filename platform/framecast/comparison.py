"""The V-BLT paper's comparison, tables 1 and 2: frame predictors side by side, each scored with
the same protocol as copy-last-frame. Plain numpy/torch/matplotlib: `jobs.compare` (Ray Train,
MLflow) and `benchmarks/compare_gpu.py` (neither) both build their tables here.

The protocol (video prediction's, as OpenSTL's benchmarks: the same frames in, the same frames
out, for every model): every model is given the same first `context` frames of each test clip
and predicts all the rest autoregressively, feeding back its own predictions
(`predict.rollout`); copy-last-frame holds the last context frame. Scores are per frame ahead
and averaged over the predicted frames (table 2). A model that predicts several frames per step
(V-BLT's 4x4x4 slices) rolls out in its own steps; the table says how many.

The teacher-forced table (each frame predicted from the true frames before it, all models on
the frames after the longest context among them) stays beside it, labelled as such.
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
# The V-BLT paper: table 1 (MB, GFLOPs per sequence), table 2 (MSE, SSIM, PSNR).
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
    """Teacher-forced MSE / PSNR / SSIM of `model`'s predictions of frames context..T-1 (each
    from the true frames before it; the model's own decoding), averaged over frames and
    sequences."""
    from framecast.predict import predict

    pred, _, _ = predict(model, videos, batch_size=batch_size)
    pred = pred[:, context - model.context_frames:]  # (N, T - context, H, W, C)
    return metrics.summary(metrics.frame_metrics(pred, videos[:, context:]))


def copy_last_score(videos: np.ndarray, context: int) -> dict[str, float]:
    """The same metrics for copy-last-frame on the same frames."""
    pred = metrics.copy_last_frame(videos, context)
    return metrics.summary(metrics.frame_metrics(pred, videos[:, context:]))


def rollout_metrics(model: torch.nn.Module, videos: np.ndarray, context: int, *,
                    batch_size: int = 8) -> dict[str, np.ndarray]:
    """Per frame ahead (T - context,) MSE / PSNR / SSIM of `model`'s rollout from the first
    `context` frames of each video (`predict.rollout`)."""
    from framecast.predict import rollout

    pred, _ = rollout(model, videos, context, batch_size=batch_size)
    return metrics.frame_metrics(pred, videos[:, context:])


def hold_last_metrics(videos: np.ndarray, context: int) -> dict[str, np.ndarray]:
    """The same for copy-last-frame under the rollout protocol (the last context frame held)."""
    return metrics.frame_metrics(metrics.hold_last_frame(videos, context), videos[:, context:])


def rollout_rows(kind: str, per_frame: dict[str, dict[str, np.ndarray]],
                 copy_last: dict[str, np.ndarray], context: int,
                 frames_per_step: dict[str, int]) -> list[Row]:
    """Table 2 rows of one data set (the rollout protocol): copy-last first, then each model;
    metrics averaged over the predicted frames, PSNR one frame ahead and at the last frame, and
    the paper's numbers (its protocol: each frame predicted from the true ones before it)."""
    rows = []
    for name, m in [(COPY_LAST, copy_last), *per_frame.items()]:
        paper = PAPER_QUALITY.get((kind, name), (None, None, None))
        s = metrics.summary(m)
        rows.append({"data": kind, "model": name, "context": context,
                     "frames/step": frames_per_step.get(name, "-"), "MSE": s["mse"],
                     "SSIM": s["ssim"], "PSNR": s["psnr"], "PSNR +1": float(m["psnr"][0]),
                     f"PSNR +{len(m['psnr'])}": float(m["psnr"][-1]), "paper MSE": paper[0],
                     "paper SSIM": paper[1], "paper PSNR": paper[2]})
    return rows


def horizon_rows(kind: str, per_frame: dict[str, dict[str, np.ndarray]],
                 copy_last: dict[str, np.ndarray]) -> list[Row]:
    """PSNR per frame ahead of one data set: a row per model (copy-last first), a column per
    frame ahead (+1 = the first predicted frame)."""
    return [{"data": kind, "model": name,
             **{f"+{i + 1}": float(v) for i, v in enumerate(m["psnr"])}}
            for name, m in [(COPY_LAST, copy_last), *per_frame.items()]]


def horizon_chart(rows: Sequence[Row]) -> bytes:
    """PNG: rollout PSNR against frames ahead, a panel per data set, a line per model and
    copy-last-frame (grey, dashed) on each."""
    from framecast.viz import _png, _pyplot

    plt = _pyplot()
    kinds = list(dict.fromkeys(str(r["data"]) for r in rows))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.6 * len(kinds), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], kinds, strict=True):
        for row in (r for r in rows if r["data"] == kind):
            ahead = [k for k in row if k.startswith("+")]
            copy = row["model"] == COPY_LAST
            ax.plot([int(k[1:]) for k in ahead], [float(row[k]) for k in ahead],
                    marker="" if copy else "o", markersize=3, label=str(row["model"]),
                    color="grey" if copy else None, linestyle="--" if copy else "-")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("frames ahead of the context")
        ax.set_ylabel("PSNR (dB)")
        ax.legend(fontsize=7)
    fig.suptitle("rollout on the test split: every model fed its own predictions", fontsize=9)
    return _png(fig)


def quality_rows(kind: str, scores: dict[str, dict[str, float]], copy_last: dict[str, float],
                 frames: str) -> list[Row]:
    """Teacher-forced rows of one data set: copy-last first, then each model, with the
    paper's."""
    rows = []
    for name, s in [(COPY_LAST, copy_last), *scores.items()]:
        paper = PAPER_QUALITY.get((kind, name), (None, None, None))
        rows.append({"data": kind, "model": name, "frames": frames, "MSE": s["mse"],
                     "SSIM": s["ssim"], "PSNR": s["psnr"], "paper MSE": paper[0],
                     "paper SSIM": paper[1], "paper PSNR": paper[2]})
    return rows


FLOPS_CONVENTION = (
    "GFLOPs: one forward pass per sequence, a multiply-add counted as 2 FLOPs, attention "
    "(QK^T and PV) included, norms, activations and bias adds not; the paper does not state "
    "its convention (under 1 FLOP per multiply-add every GFLOPs figure here halves)")


def cost_row(name: str, preset: str, model: torch.nn.Module,
             frame_shape: tuple[int, int, int, int]) -> Row:
    """Table 1 row: parameters, fp32 MB, forward GFLOPs per sequence at the data's frame shape
    (T, H, W, C) and at the paper's 12x64x64 (`FLOPS_CONVENTION`), beside the paper's."""
    t, h, w, c = frame_shape
    here = model_cost(model, t, h, c, w)
    paper = model_cost(model, *PAPER_FRAME_SHAPE[:2], c, PAPER_FRAME_SHAPE[2])
    ref = PAPER_COST.get(name, (None, None))
    return {"model": name, "preset": preset, "params": int(here["params"]), "MB": here["mb"],
            "sequence": f"{t}x{h}x{w}", "GFLOPs": here["gflops"],
            "GFLOPs 12x64x64": paper["gflops"], "paper MB": ref[0], "paper GFLOPs": ref[1]}


def convention_notes(rows: Sequence[Row], tolerance: float = 0.25) -> list[str]:
    """Per table-1 row with the paper's GFLOPs: ours at 12x64x64 as a ratio to the paper's under
    both conventions, and whether a factor of 2 decides if the two match (within
    `tolerance`)."""
    notes = []
    for r in rows:
        if r.get("paper GFLOPs") is None:
            continue
        two = float(r["GFLOPs 12x64x64"]) / float(r["paper GFLOPs"])
        one = two / 2
        close = [label for label, ratio in (("2 FLOPs per multiply-add", two),
                                            ("1 FLOP per multiply-add", one))
                 if abs(ratio - 1) <= tolerance]
        verdict = (f"matches the paper only under {close[0]}" if len(close) == 1 else
                   "matches the paper under neither convention" if not close else
                   "matches under both")
        notes.append(f"{r['model']} {r['preset']}: {float(r['GFLOPs 12x64x64']):.1f} GFLOPs = "
                     f"{two:.2f}x the paper's {r['paper GFLOPs']} at 2 FLOPs per multiply-add, "
                     f"{one:.2f}x at 1; {verdict} (within {tolerance:.0%})")
    return notes


def psnr_keys(quality: Sequence[Row], teacher_forced: Sequence[Row]) -> dict[str, float]:
    """The benchmarks' RESULT keys: rollout_psnr_<model>_<data> (table 2) and
    psnr_<model>_<data> (teacher-forced), models first and copy-last last per data set."""
    out = {}
    for prefix, rows in (("rollout_psnr", quality), ("psnr", teacher_forced)):
        for r in sorted(rows, key=lambda r: (str(r["data"]), r["model"] == COPY_LAST)):
            out[f"{prefix}_{str(r['model']).replace(COPY_LAST, 'copy')}_{r['data']}"] = r["PSNR"]
    return out


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
    fig.suptitle("test split; black ticks: the V-BLT paper's table 2 (its protocol: teacher-"
                 "forced)", fontsize=9)
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
                 curves: Sequence[Row] = (), lr_sweep: Sequence[Row] = (),
                 horizon: Sequence[Row] = (), teacher_forced: Sequence[Row] = ()
                 ) -> list[Path]:
    """table1, table2 (the rollout protocol), horizon (PSNR per frame ahead), teacher_forced
    (and curves, the lr sweep) as Markdown and CSV, plus the PNG charts, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, rows in (("table1", cost), ("table2", quality), ("horizon", horizon),
                       ("teacher_forced", teacher_forced), ("curves", curves),
                       ("lr_sweep", lr_sweep)):
        if not rows:
            continue
        for suffix, text in ((".md", markdown(rows) + "\n"), (".csv", csv_text(rows))):
            (path := out / f"{stem}{suffix}").write_text(text)
            written.append(path)
    for stem, rows, chart in (("table2", quality, quality_chart),
                              ("horizon", horizon, horizon_chart),
                              ("curves", curves, curves_chart)):
        if rows:
            (path := out / f"{stem}.png").write_bytes(chart(rows))
            written.append(path)
    return written
