"""What a synthetic data set is: the config that, with a seed, fixes every byte of it."""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from framecast.config import ConfigError
from framecast.render.polycubes import MAX_CUBES

Kind = Literal["2d", "3d"]
SPLITS = ("train", "val", "test")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class RenderConfig:
    """Everything that defines a rendered data set. Same config -> byte-identical data."""

    kind: Kind = field(default="2d", metadata=_help("2d: rotating triangles; 3d: polycubes"))
    num_sequences: int = field(default=256, metadata=_help("number of sequences in all splits"))
    seed: int = field(default=0, metadata=_help("sequence i is a pure function of (seed, i)"))
    frames: int = field(default=12, metadata=_help("frames per sequence"))
    size: int = field(default=64, metadata=_help("frame height and width in pixels"))
    channels: int = field(default=1, metadata=_help("1: grey; 3: colour (RGB)"))
    val_fraction: float = field(default=0.1, metadata=_help("share of sequences in val"))
    test_fraction: float = field(default=0.1, metadata=_help("share of sequences in test"))
    # 2D triangles, in scene units.
    base_range: tuple[float, float] = field(
        default=(0.8, 1.6), metadata=_help("2d: triangle base length range"))
    height_range: tuple[float, float] = field(
        default=(0.6, 1.4), metadata=_help("2d: triangle height range"))
    apex_offset_range: tuple[float, float] = field(
        default=(-0.5, 0.5),
        metadata=_help("2d: apex offset along the base from its midpoint, in base lengths"))
    spin_range_2d: tuple[float, float] = field(
        default=(5.0, 20.0),
        metadata=_help("2d: angular speed range, degrees per frame (direction is random)"))
    # 3D polycubes.
    cubes_range: tuple[int, int] = field(
        default=(2, 6), metadata=_help(f"3d: number of cubes n, within 1..{MAX_CUBES}"))
    spin_range_3d: tuple[float, float] = field(
        default=(2.0, 10.0),
        metadata=_help("3d: range of each angular-velocity component, degrees per frame "
                       "(signs are random)"))
    fill_frame: bool = field(
        default=False,
        metadata=_help("scale each object to fill the frame at every angle (off: one scale for "
                       "all, fitted to the largest object the ranges allow)"))

    def __post_init__(self) -> None:
        if self.kind not in ("2d", "3d"):
            raise ConfigError(f"kind={self.kind!r} is unknown; accepted: '2d', '3d'")
        for name in ("num_sequences", "frames", "size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.frames < 2:
            raise ConfigError(f"frames={self.frames} must be at least 2 (a video predicts frames)")
        if self.size < 8:
            raise ConfigError(f"size={self.size} must be at least 8 pixels")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels={self.channels} is not supported; accepted: 1, 3")
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError("val_fraction + test_fraction must leave sequences for train "
                              f"(got {self.val_fraction} + {self.test_fraction})")
        for name in ("base_range", "height_range", "apex_offset_range", "spin_range_2d",
                     "cubes_range", "spin_range_3d"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
                raise ConfigError(f"{name}=({lo}, {hi}) is an empty range; need LO <= HI")
        for name in ("base_range", "height_range"):
            if getattr(self, name)[0] <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must hold positive lengths")
        for name in ("spin_range_2d", "spin_range_3d"):
            if getattr(self, name)[0] < 0:
                raise ConfigError(f"{name}={getattr(self, name)} is a speed range; need LO >= 0")
        lo, hi = self.cubes_range
        if lo < 1 or hi > MAX_CUBES:
            raise ConfigError(f"cubes_range=({lo}, {hi}) is outside what the polycube "
                              f"enumerator supports: 1..{MAX_CUBES}")

    @property
    def frame_shape(self) -> tuple[int, int, int, int]:
        """(T, H, W, C) of one sequence."""
        return (self.frames, self.size, self.size, self.channels)

    def split_sizes(self) -> dict[str, int]:
        n_val = round(self.num_sequences * self.val_fraction)
        n_test = round(self.num_sequences * self.test_fraction)
        return {"train": self.num_sequences - n_val - n_test, "val": n_val, "test": n_test}

    def split_of(self, indices: np.ndarray) -> np.ndarray:
        """Split name per sequence index: contiguous index ranges train | val | test."""
        sizes = self.split_sizes()
        edges = np.cumsum([sizes["train"], sizes["val"]])
        return np.asarray(SPLITS)[np.searchsorted(edges, indices, side="right")]

    def rng(self, index: int) -> np.random.Generator:
        """The random stream of sequence `index`: independent of workers and their order."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, index]))


# Named data sets beside the defaults (`jobs.render --preset NAME`; explicit flags win).
# "hard": the V-BLT comparison's data. With the defaults, 3D copy-last-frame scores above the
# paper's V-BLT (small cubes turning slowly), which makes beating the paper's numbers
# meaningless; every object filling the frame and faster spins bring copy-last well below it
# on both kinds (benchmarks/RESULTS.md, compare).
DATA_PRESETS: dict[str, dict[str, object]] = {
    "hard": {"fill_frame": True, "spin_range_2d": (10.0, 25.0), "spin_range_3d": (5.0, 12.0)},
}


def preset_flags(name: str) -> list[str]:
    """The command-line flags of data preset `name` (ConfigError naming the presets if unknown)."""
    if name not in DATA_PRESETS:
        raise ConfigError(f"data preset {name!r} is unknown; available: "
                          f"{', '.join(sorted(DATA_PRESETS))}")
    flags: list[str] = []
    for key, value in DATA_PRESETS[name].items():
        flags.append("--" + key.replace("_", "-"))
        flags += [str(v) for v in value] if isinstance(value, tuple) else [str(value).lower()]
    return flags


def sample_colour(channels: int, rng: np.random.Generator, grey: float) -> list[float]:
    """Grey for one channel; a saturated random hue for three. The hue is drawn either way, so the
    random stream, and hence the shapes, do not depend on the channel count."""
    hue = rng.uniform(0.0, 1.0)
    if channels == 1:
        return [grey, grey, grey]
    return [float(c) for c in colorsys.hsv_to_rgb(hue, 0.7, 1.0)]
