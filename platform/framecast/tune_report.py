"""What a finished study shows: its trials as a table (Markdown and CSV), its Pareto front and
one plot of the trade-off it explores. Plain data in, text and PNG bytes out; no Ray, no MLflow.

A row is one trial: {"trial": id, "status": ..., "step": ..., <params key>: value, ...,
<metric>: float, ...}; a missing metric (a failed trial) is shown as "-".
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any


def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan


def pareto_front(rows: Sequence[Mapping[str, Any]], objectives: Mapping[str, str]) -> list[bool]:
    """For each row, whether no other row is at least as good on every objective
    ({metric: 'min' | 'max'}) and better on one. Rows missing an objective are never on it."""
    sign = {k: (1.0 if mode == "max" else -1.0) for k, mode in objectives.items()}
    points = [[sign[k] * _value(row, k) for k in sign] for row in rows]
    front = []
    for i, p in enumerate(points):
        if any(math.isnan(v) for v in p):
            front.append(False)
            continue
        dominated = any(
            j != i and not any(math.isnan(v) for v in q)
            and all(a >= b for a, b in zip(q, p, strict=True))
            and any(a > b for a, b in zip(q, p, strict=True))
            for j, q in enumerate(points))
        front.append(not dominated)
    return front


def rank(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> list[Mapping[str, Any]]:
    """Rows best first by `metric`; rows without it last."""
    def key(row: Mapping[str, Any]) -> tuple[bool, float]:
        value = _value(row, metric)
        return (math.isnan(value), -value if mode == "max" else value)

    return sorted(rows, key=key)


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else ("yes" if value else "")
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.4g}"
    return str(value)


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> tuple[str, str]:
    """(Markdown, CSV) of the rows in the given column order; the CSV keeps full precision."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([["" if row.get(c) is None else row.get(c) for c in columns]
                      for row in rows])
    return "\n".join(lines) + "\n", out.getvalue()


def _crowded(xs: Sequence[float], ys: Sequence[float]) -> bool:
    """Whether two points sit so close (within 15% of the x range and 6% of the y range) that
    labels written beside them would overlap."""
    def unit(vs: Sequence[float]) -> list[float]:
        lo, hi = min(vs, default=0.0), max(vs, default=0.0)
        return [(v - lo) / (hi - lo) if hi > lo else 0.0 for v in vs]
    ux, uy = unit(xs), unit(ys)
    return any(abs(ux[a] - ux[b]) < 0.15 and abs(uy[a] - uy[b]) < 0.06
               for a in range(len(ux)) for b in range(a + 1, len(ux)))


def study_plot(rows: Sequence[Mapping[str, Any]], x: str, y: str, *, labels: Sequence[str],
               color: str = "", front: Sequence[bool] = (), title: str = "") -> bytes:
    """PNG: one point per trial at (x, y), labelled (e.g. its block shape), coloured by
    `color` when given; points of the Pareto front ringed and joined."""
    from framecast.viz import _png, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    xs = [_value(r, x) for r in rows]
    ys = [_value(r, y) for r in rows]
    shown = [i for i in range(len(rows)) if not (math.isnan(xs[i]) or math.isnan(ys[i]))]
    if color:
        cs = [_value(rows[i], color) for i in shown]
        points = ax.scatter([xs[i] for i in shown], [ys[i] for i in shown], c=cs, cmap="viridis",
                            s=45, zorder=3)
        fig.colorbar(points, ax=ax, label=color)
    else:
        ax.scatter([xs[i] for i in shown], [ys[i] for i in shown], s=45, zorder=3)
    # Long labels (several searched values), or labels of points close together, would run over
    # each other: the points get numbers and a key below the axes says what each number is.
    long = (any(len(labels[i]) > 24 for i in shown)
            or _crowded([xs[i] for i in shown], [ys[i] for i in shown]))
    span = (min(xs[i] for i in shown), max(xs[i] for i in shown)) if shown else (0.0, 0.0)
    for n, i in enumerate(shown, 1):
        # A label near the right edge goes to the left of its point, inside the axes.
        right = span[1] > span[0] and (xs[i] - span[0]) / (span[1] - span[0]) > 0.7
        ax.annotate(f"#{n}" if long else labels[i], (xs[i], ys[i]), textcoords="offset points",
                    xytext=(-5, 4) if right else (5, 4), ha="right" if right else "left",
                    fontsize=8)
    if long:
        key = "\n".join(f"#{n}: {labels[i]}" for n, i in enumerate(shown, 1))
        fig.text(0.01, 0.0, key, fontsize=7, va="top", family="monospace")
    on_front = sorted((xs[i], ys[i]) for i in shown if front and front[i])
    if on_front:
        ax.plot(*zip(*on_front, strict=True), color="tab:red", lw=1, zorder=2,
                label="Pareto front")
        ax.scatter(*zip(*on_front, strict=True), s=140, facecolors="none",
                   edgecolors="tab:red", zorder=4)
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    return _png(fig)
