"""Polycubes: enumeration up to rotation, and their meshes.

A polycube of size n is n unit cubes glued face to face. Two are the same shape when a proper
rotation (one of the 24 of the cube; mirror images stay distinct) maps one onto the other. The
enumerator grows every shape of size n-1 by one cube and keeps one canonical form per class
(the lexicographically smallest normalised cell list over the 24 rotations), which yields the
known counts 1, 1, 2, 8, 29, 166, 1023, 6922 for n = 1..8.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np

Cell = tuple[int, int, int]
Shape = tuple[Cell, ...]

MAX_CUBES = 8  # n = 8 takes a few seconds in pure Python; n = 9 would take minutes.

_NEIGHBOURS: tuple[Cell, ...] = (
    (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1),
)


def _rotation_matrices() -> np.ndarray:
    """The 24 proper rotations of the cube as integer 3x3 matrices (signed permutations, det +1)."""
    mats = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            m = np.zeros((3, 3), dtype=np.int64)
            for row, (col, sign) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = sign
            if round(np.linalg.det(m)) == 1:
                mats.append(m)
    return np.stack(mats)  # (24, 3, 3)


ROTATIONS = _rotation_matrices()


def _normalise(cells: np.ndarray) -> Shape:
    shifted = cells - cells.min(axis=0)
    return tuple(sorted(map(tuple, shifted.tolist())))  # type: ignore[arg-type]


def canonical(cells: Shape | list[Cell] | np.ndarray) -> Shape:
    """The representative of a shape's rotation class: the smallest normalised form."""
    arr = np.asarray(cells, dtype=np.int64)  # (n, 3)
    rotated = np.einsum("rij,nj->rni", ROTATIONS, arr)  # (24, n, 3)
    return min(_normalise(r) for r in rotated)


@functools.cache
def enumerate_polycubes(n: int) -> tuple[Shape, ...]:
    """All polycubes of n cubes, distinct up to rotation, in a fixed (sorted) order."""
    if not 1 <= n <= MAX_CUBES:
        raise ValueError(f"polycube size n={n} is outside the supported range 1..{MAX_CUBES}")
    if n == 1:
        return (((0, 0, 0),),)
    found: set[Shape] = set()
    for shape in enumerate_polycubes(n - 1):
        occupied = set(shape)
        for (x, y, z), (dx, dy, dz) in itertools.product(shape, _NEIGHBOURS):
            cell = (x + dx, y + dy, z + dz)
            if cell not in occupied:
                found.add(canonical([*shape, cell]))
    return tuple(sorted(found))


def centred_cells(shape: Shape) -> np.ndarray:
    """Cube centres (n, 3) as floats, shifted so the shape's centre of mass is the origin."""
    arr = np.asarray(shape, dtype=np.float64)
    return arr - arr.mean(axis=0)


def bounding_radius(shape: Shape) -> float:
    """Largest distance from the centre of mass to any cube corner: the shape fits in this sphere
    under every rotation."""
    centres = centred_cells(shape)
    corners = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))  # (8, 3)
    return float(np.linalg.norm(centres[:, None, :] + corners[None], axis=-1).max())


@functools.cache
def max_bounding_radius(n_max: int) -> float:
    """Worst-case bounding radius over all polycubes of at most n_max cubes (the straight rod)."""
    return max(bounding_radius(s) for n in range(1, n_max + 1) for s in enumerate_polycubes(n))


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (a normalised Gaussian quaternion)."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def axis_angle(vector_deg: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector `vector_deg` (axis * angle in degrees): Rodrigues."""
    angle = np.radians(np.linalg.norm(vector_deg))
    if angle == 0.0:
        return np.eye(3)
    kx, ky, kz = np.asarray(vector_deg) / np.linalg.norm(vector_deg)
    k = np.array([[0.0, -kz, ky], [kz, 0.0, -kx], [-ky, kx, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def sample_polycube(n_range: tuple[int, int], spin_range: tuple[float, float],
                    rng: np.random.Generator) -> dict:
    """The generating parameters of one 3D sequence (JSON-ready): n, which canonical shape, the
    initial orientation and a constant angular-velocity vector."""
    n = int(rng.integers(n_range[0], n_range[1] + 1))
    shapes = enumerate_polycubes(n)
    shape_index = int(rng.integers(len(shapes)))
    rotation = random_rotation(rng)
    velocity = rng.uniform(*spin_range, size=3) * rng.choice((-1.0, 1.0), size=3)
    return {
        "n_cubes": n,
        "shape_index": shape_index,
        "cells": [list(c) for c in shapes[shape_index]],
        "initial_rotation": rotation.round(12).tolist(),
        "angular_velocity_deg": velocity.tolist(),
    }
