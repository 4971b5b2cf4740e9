"""2D rotating triangles: shape sampling and geometry (paper section on 2D figures)."""

from __future__ import annotations

import math

import numpy as np

from framecast.render.spec import RenderConfig, sample_colour


def triangle_vertices(base: float, height: float, apex_offset: float) -> np.ndarray:
    """Vertices (3, 2) of the triangle with its centroid at the origin.

    The base lies on y = 0 centred on x = 0; the apex stands `height` above it, shifted along the
    base by `apex_offset` base lengths.
    """
    verts = np.array([[-base / 2, 0.0], [base / 2, 0.0], [apex_offset * base, height]])
    return verts - verts.mean(axis=0)


def max_triangle_radius(config: RenderConfig) -> float:
    """Largest centroid-to-vertex distance over the config's ranges: the triangle stays inside a
    circle of this radius at every angle, so one static camera fits every sequence."""
    worst = 0.0
    for base in config.base_range:
        for height in config.height_range:
            for offset in config.apex_offset_range:
                # The distance is convex in each parameter, so the maximum sits at a corner.
                worst = max(worst, float(np.linalg.norm(
                    triangle_vertices(base, height, offset), axis=1).max()))
    return worst


def sample_triangle(config: RenderConfig, rng: np.random.Generator) -> dict:
    """The generating parameters of one 2D sequence (JSON-ready)."""
    spin = rng.uniform(*config.spin_range_2d) * rng.choice((-1.0, 1.0))
    return {
        "base": float(rng.uniform(*config.base_range)),
        "height": float(rng.uniform(*config.height_range)),
        "apex_offset": float(rng.uniform(*config.apex_offset_range)),
        "initial_angle_deg": float(rng.uniform(0.0, 360.0)),
        "angular_velocity_deg": float(spin),
        "colour": sample_colour(config.channels, rng, grey=1.0),
    }


def rotation_z(angle_deg: float) -> np.ndarray:
    """3x3 rotation about the axis perpendicular to the image."""
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])

