"""Pictures of videos for people: contact sheets and animated GIFs (numpy + Pillow)."""

from __future__ import annotations

import io

import numpy as np


def _as_rgb(videos: np.ndarray) -> np.ndarray:
    """(N, T, H, W, C) uint8 with C in {1, 3} -> (N, T, H, W, 3)."""
    if videos.ndim != 5 or videos.shape[-1] not in (1, 3):
        raise ValueError(f"expected videos (N, T, H, W, C) with C 1 or 3, got {videos.shape}")
    return np.repeat(videos, 3, axis=-1) if videos.shape[-1] == 1 else videos


def contact_sheet(videos: np.ndarray, *, gap: int = 2, scale: int = 2) -> np.ndarray:
    """One image: a row per video, a column per frame, separated by grey gaps; (H', W', 3)."""
    rgb = _as_rgb(videos)
    n, t, h, w, _ = rgb.shape
    sheet = np.full((n * (h + gap) + gap, t * (w + gap) + gap, 3), 96, np.uint8)
    for i in range(n):
        for j in range(t):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            sheet[y:y + h, x:x + w] = rgb[i, j]
    return np.kron(sheet, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else sheet


def gif_bytes(videos: np.ndarray, *, fps: int = 6, scale: int = 2) -> bytes:
    """An animated GIF showing the videos side by side, looping."""
    from PIL import Image

    rgb = _as_rgb(videos)
    n, t, h, w, _ = rgb.shape
    frames = []
    for j in range(t):
        strip = np.concatenate([rgb[i, j] for i in range(n)], axis=1)
        strip = np.kron(strip, np.ones((scale, scale, 1), np.uint8))
        frames.append(Image.fromarray(strip))
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:],
                   duration=int(1000 / fps), loop=0)
    return buf.getvalue()


def _pyplot():
    """matplotlib.pyplot on the headless Agg backend (imported late: plotting is optional)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    """The figure as PNG bytes; closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def prediction_figure(truth: np.ndarray, pred: np.ndarray, entropy: np.ndarray, *,
                      title: str = "") -> bytes:
    """PNG like V-BLT figures 7-8 for one sequence: rows ground truth, prediction, entropy map
    (bits, shared colour scale 0..8); a column per predicted frame. Inputs (T, H, W, C)."""
    plt = _pyplot()
    frames = truth.shape[0]
    fig, axes = plt.subplots(3, frames, figsize=(1.2 * frames + 1.0, 4.0), squeeze=False)
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255}
    image = None
    for j in range(frames):
        for row, (img, kwargs) in enumerate((
            (truth[j].squeeze(-1) if truth.shape[-1] == 1 else truth[j], grey),
            (pred[j].squeeze(-1) if pred.shape[-1] == 1 else pred[j], grey),
            (entropy[j].mean(-1), {"cmap": "inferno", "vmin": 0.0, "vmax": 8.0}),
        )):
            shown = axes[row, j].imshow(img, **kwargs)
            if row == 2:
                image = shown
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
        axes[0, j].set_title(f"t+{j + 1}", fontsize=8)
    for row, label in enumerate(("truth", "prediction", "entropy")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.colorbar(image, ax=axes[2, :].tolist(), shrink=0.9, label="bits")
    if title:
        fig.suptitle(title, fontsize=9)
    return _png(fig)


def plan_figure(layers: list[str], sensitivities: list[float], precisions: list[str],
                thresholds: tuple[float, float], *, title: str = "") -> bytes:
    """PNG of a quantization plan: one bar of S(W) per layer (log scale), coloured by its
    precision, with the two thresholds as vertical lines."""
    plt = _pyplot()
    colours = {"int8": "tab:blue", "int8_asym": "tab:orange", "fp16": "tab:red"}
    fig, ax = plt.subplots(figsize=(7.0, 0.18 * len(layers) + 1.2))
    y = np.arange(len(layers))
    ax.barh(y, sensitivities, color=[colours.get(p, "grey") for p in precisions])
    ax.set_yticks(y, layers, fontsize=6)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("sensitivity S(W) = ||W||2/||W||F * E||dL/dW||F")
    for tau, name in zip(thresholds, ("tau_low", "tau_high"), strict=True):
        if tau > 0:
            ax.axvline(tau, color="black", linestyle="--", linewidth=0.8)
            ax.text(tau, -1, name, fontsize=7, ha="center")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colours.values()]
    ax.legend(handles, list(colours), fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)
    return _png(fig)
