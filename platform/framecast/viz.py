"""Pictures of videos for people: contact sheets and animated GIFs (numpy + Pillow)."""

from __future__ import annotations

import io
from dataclasses import dataclass

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
                      title: str = "", patches: PatchView | None = None) -> bytes:
    """PNG like V-BLT figures 7-8 for one sequence: rows ground truth, prediction, entropy map
    (bits, shared colour scale 0..8); a column per predicted frame. Inputs (T, H, W, C). With
    `patches` (dynamic patching), two more rows: the input each prediction was made from with
    the patches its latents cover drawn over it, and the entropy that chose them."""
    plt = _pyplot()
    frames = truth.shape[0]
    rows = 5 if patches else 3
    fig, axes = plt.subplots(rows, frames, figsize=(1.2 * frames + 1.0, 1.33 * rows),
                             squeeze=False)
    grey = {"cmap": "gray", "vmin": 0, "vmax": 255}
    hot = {"cmap": "inferno", "vmin": 0.0, "vmax": 8.0}
    labels = ["truth", "prediction", "entropy"]
    image = None
    for j in range(frames):
        shown = [(_channel_view(truth[j]), grey), (_channel_view(pred[j]), grey),
                 (entropy[j].mean(-1), hot)]
        if patches:
            shown += [(_channel_view(patches.inputs[j]), grey), (patches.entropy[j], hot)]
        for row, (img, kwargs) in enumerate(shown):
            drawn = axes[row, j].imshow(img, **kwargs)
            if row == 2:
                image = drawn
            axes[row, j].set_xticks([])
            axes[row, j].set_yticks([])
        if patches:
            for y, x, h, w in patches.boxes[j]:
                axes[3, j].add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False,
                                                   edgecolor="tab:cyan", linewidth=0.8))
        axes[0, j].set_title(f"t+{j + 1}", fontsize=8)
    if patches:
        labels += ["input + patches", "entropy model"]
    for row, label in enumerate(labels):
        axes[row, 0].set_ylabel(label, fontsize=8)
    fig.colorbar(image, ax=axes[2:, :].ravel().tolist() if patches else axes[2, :].tolist(),
                 shrink=0.9, label="bits")
    if title:
        fig.suptitle(title, fontsize=9)
    return _png(fig)


def _channel_view(frame: np.ndarray) -> np.ndarray:
    """(H, W, C) -> what imshow takes: (H, W) for one channel."""
    return frame.squeeze(-1) if frame.shape[-1] == 1 else frame


@dataclass(frozen=True)
class PatchView:
    """Where a dynamically patched model spent its latents, per predicted frame: the input frame
    shown (H, W, C), the patches (y, x, height, width) of the slice it was predicted from, and
    the entropy (bits, (H, W)) that chose them."""

    inputs: np.ndarray
    boxes: list[list[tuple[int, int, int, int]]]
    entropy: np.ndarray


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
