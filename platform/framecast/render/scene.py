"""Render sequences with PyVista off screen, keeping one plotter warm across sequences.

Creating a plotter costs far more than a frame, so a `SequenceRenderer` builds its plotter once and
only swaps the actor per sequence. Each frame sets the actor's transform and calls `render()`
before the screenshot: without it every frame of a sequence comes out identical.
"""

from __future__ import annotations

import os

import numpy as np

from framecast.render import polycubes, triangles
from framecast.render.spec import RenderConfig, sample_colour

# VTK otherwise tries an X window first and warns when there is no display.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

_CAMERA_DISTANCE = 10.0
_MARGIN = 1.08  # leave a few pixels between the object's extreme reach and the frame border
_GREY_3D = 0.85


def sequence_params(config: RenderConfig, index: int) -> dict:
    """The generating parameters of sequence `index` (JSON-ready): a pure function of
    (config, index)."""
    rng = config.rng(index)
    if config.kind == "2d":
        params = triangles.sample_triangle(config, rng)
    else:
        params = polycubes.sample_polycube(config.cubes_range, config.spin_range_3d, rng)
        params["colour"] = sample_colour(config.channels, rng, grey=_GREY_3D)
    return {"index": int(index), "kind": config.kind, "seed": config.seed, **params}


def frame_rotations(config: RenderConfig, params: dict) -> np.ndarray:
    """The object's rotation matrix in every frame, (T, 3, 3): constant angular velocity."""
    steps = range(config.frames)
    if config.kind == "2d":
        angle0, omega = params["initial_angle_deg"], params["angular_velocity_deg"]
        return np.stack([triangles.rotation_z(angle0 + omega * t) for t in steps])
    r0 = np.asarray(params["initial_rotation"])
    omega = np.asarray(params["angular_velocity_deg"])
    return np.stack([polycubes.axis_angle(omega * t) @ r0 for t in steps])


def scene_radius(config: RenderConfig) -> float:
    """Radius that holds every object this config can produce, at every orientation."""
    if config.kind == "2d":
        return triangles.max_triangle_radius(config)
    return polycubes.max_bounding_radius(config.cubes_range[1])


def object_scale(config: RenderConfig, params: dict) -> float:
    """How much sequence `params`' object is enlarged: 1 unless `fill_frame`, then the scene
    radius over the object's own bounding radius (it fills the frame at its worst angle)."""
    if not config.fill_frame:
        return 1.0
    if config.kind == "2d":
        verts = triangles.triangle_vertices(params["base"], params["height"],
                                            params["apex_offset"])
        own = float(np.linalg.norm(verts, axis=1).max())
    else:
        own = polycubes.bounding_radius(tuple(map(tuple, params["cells"])))
    return scene_radius(config) / own


def to_channels(rgb: np.ndarray, channels: int) -> np.ndarray:
    """(H, W, 3) uint8 screenshot -> (H, W, C) uint8; one channel is integer BT.601 luma."""
    if channels == 3:
        return rgb
    weights = np.array([299, 587, 114], dtype=np.uint32)
    return ((rgb.astype(np.uint32) @ weights + 500) // 1000).astype(np.uint8)[..., None]


class SequenceRenderer:
    """Renders whole sequences of one config; holds a warm off-screen plotter."""

    def __init__(self, config: RenderConfig) -> None:
        self.config = config
        self._plotter = None
        self._actor = None

    def _make_plotter(self):
        import pyvista as pv

        size = self.config.size
        plotter = pv.Plotter(off_screen=True, window_size=(size, size),
                             lighting="none" if self.config.kind == "3d" else "light kit")
        plotter.set_background("black")
        plotter.enable_parallel_projection()
        plotter.camera_position = [(0.0, 0.0, _CAMERA_DISTANCE), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0)]
        plotter.camera.parallel_scale = scene_radius(self.config) * _MARGIN
        plotter.camera.clipping_range = (0.1, 2 * _CAMERA_DISTANCE)
        if self.config.kind == "3d":
            # One directional key light from the upper left front plus a weak fill from the
            # other side: faces at different angles get clearly different brightness.
            plotter.add_light(pv.Light(position=(-1.0, 1.5, 2.0), focal_point=(0, 0, 0),
                                       intensity=0.9, light_type="scene light", positional=False))
            plotter.add_light(pv.Light(position=(1.5, -1.0, 0.5), focal_point=(0, 0, 0),
                                       intensity=0.25, light_type="scene light",
                                       positional=False))
        return plotter

    def _mesh(self, params: dict):
        import pyvista as pv

        if self.config.kind == "2d":
            xy = triangles.triangle_vertices(params["base"], params["height"],
                                             params["apex_offset"])
            points = np.column_stack([xy, np.zeros(3)])
            return pv.PolyData(points, faces=np.array([3, 0, 1, 2]))
        centres = polycubes.centred_cells(tuple(map(tuple, params["cells"])))
        cubes = [pv.Cube(center=c, x_length=1.0, y_length=1.0, z_length=1.0) for c in centres]
        return pv.merge(cubes)

    def render(self, index: int) -> tuple[np.ndarray, dict]:
        """Frames (T, H, W, C) uint8 and the generating parameters of sequence `index`."""
        if self._plotter is None:
            self._plotter = self._make_plotter()
        plotter, config = self._plotter, self.config
        params = sequence_params(config, index)
        if self._actor is not None:
            plotter.remove_actor(self._actor, render=False)
        colour = params["colour"]
        if config.kind == "2d":
            self._actor = plotter.add_mesh(self._mesh(params), color=colour, lighting=False,
                                           reset_camera=False, render=False)
        else:
            edge = [0.35 * c for c in colour]
            self._actor = plotter.add_mesh(
                self._mesh(params), color=colour, show_edges=True, edge_color=edge,
                line_width=1, ambient=0.15, diffuse=0.85, specular=0.0,
                reset_camera=False, render=False)
        frames = np.empty(config.frame_shape, dtype=np.uint8)
        transform = np.eye(4)
        scale = object_scale(config, params)
        for t, rotation in enumerate(frame_rotations(config, params)):
            transform[:3, :3] = rotation * scale
            self._actor.user_matrix = transform
            plotter.render()
            rgb = plotter.screenshot(return_img=True)
            frames[t] = to_channels(np.ascontiguousarray(rgb[..., :3]), config.channels)
        return frames, params

    def close(self) -> None:
        if self._plotter is not None:
            self._plotter.close()
            self._plotter = None
            self._actor = None
