"""Renderers: geometry, determinism, motion, framing and shading (no Ray)."""

import numpy as np
import pytest

from framecast.config import ConfigError
from framecast.render import triangles
from framecast.render.scene import SequenceRenderer, sequence_params, to_channels
from framecast.render.spec import RenderConfig

SMALL = {"frames": 6, "size": 48, "num_sequences": 10}


@pytest.fixture(scope="module")
def renderer_2d():
    r = SequenceRenderer(RenderConfig(kind="2d", **SMALL))
    yield r
    r.close()


@pytest.fixture(scope="module")
def renderer_3d():
    r = SequenceRenderer(RenderConfig(kind="3d", **SMALL))
    yield r
    r.close()


def test_triangle_is_centred_on_its_centroid_and_has_the_asked_base_and_height():
    v = triangles.triangle_vertices(base=2.0, height=1.5, apex_offset=0.25)
    assert np.allclose(v.mean(axis=0), 0.0)
    assert np.isclose(np.linalg.norm(v[1] - v[0]), 2.0)
    assert np.isclose(v[2, 1] - v[0, 1], 1.5)
    assert np.isclose(v[2, 0] - (v[0, 0] + v[1, 0]) / 2, 0.5)  # 0.25 base lengths


def test_sequence_parameters_are_a_pure_function_of_seed_and_index():
    cfg = RenderConfig(kind="3d")
    assert sequence_params(cfg, 5) == sequence_params(cfg, 5)
    assert sequence_params(cfg, 5) != sequence_params(cfg, 6)
    assert sequence_params(RenderConfig(kind="3d", seed=1), 5) != sequence_params(cfg, 5)


def test_parameters_stay_inside_their_ranges():
    cfg = RenderConfig(kind="3d", cubes_range=(3, 4), spin_range_3d=(1.0, 2.0))
    for i in range(50):
        p = sequence_params(cfg, i)
        assert 3 <= p["n_cubes"] <= 4 and len(p["cells"]) == p["n_cubes"]
        assert all(1.0 <= abs(w) <= 2.0 for w in p["angular_velocity_deg"])
    cfg = RenderConfig(kind="2d", base_range=(1.0, 1.2), spin_range_2d=(3.0, 4.0))
    for i in range(50):
        p = sequence_params(cfg, i)
        assert 1.0 <= p["base"] <= 1.2 and 3.0 <= abs(p["angular_velocity_deg"]) <= 4.0


def test_colour_does_not_change_the_shape():
    grey = sequence_params(RenderConfig(kind="3d", channels=1), 4)
    colour = sequence_params(RenderConfig(kind="3d", channels=3), 4)
    assert grey.pop("colour") != colour.pop("colour")
    assert grey == colour


def test_luma_of_grey_pixels_is_exact():
    rgb = np.array([[[0, 0, 0], [255, 255, 255], [77, 77, 77]]], np.uint8)
    assert to_channels(rgb, 1)[..., 0].tolist() == [[0, 255, 77]]


@pytest.mark.parametrize("fixture", ["renderer_2d", "renderer_3d"])
def test_frames_change_over_time_and_the_object_stays_inside_the_frame(fixture, request):
    renderer = request.getfixturevalue(fixture)
    for index in range(4):
        frames, _ = renderer.render(index)
        assert frames.shape == (6, 48, 48, 1) and frames.dtype == np.uint8
        border = np.concatenate([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]])
        assert border.max() == 0, "object touches the frame border"
        assert all((frames[t] > 0).sum() > 20 for t in range(6)), "object missing"
        assert all((frames[t] != frames[t + 1]).any() for t in range(5)), "a frame repeats"


@pytest.mark.parametrize("fixture", ["renderer_2d", "renderer_3d"])
def test_rendering_is_byte_identical_whatever_was_rendered_before(fixture, request):
    renderer = request.getfixturevalue(fixture)
    first, _ = renderer.render(7)
    renderer.render(2)
    again, _ = renderer.render(7)
    assert np.array_equal(first, again)
    fresh = SequenceRenderer(renderer.config)
    try:
        assert np.array_equal(fresh.render(7)[0], first)
    finally:
        fresh.close()


def test_3d_frames_show_shading(renderer_3d):
    for index in range(3):
        frames, _ = renderer_3d.render(index)
        grey = frames[..., 0]
        assert all(len(np.unique(f[f > 0])) > 2 for f in grey)
        # Faces at different angles to the light: in most frames at least three grey levels
        # each cover 5% of the object (anti-aliased edge pixels alone would not).
        broad = []
        for f in grey:
            _, counts = np.unique(f[f > 0], return_counts=True)
            broad.append(int((counts >= 0.05 * counts.sum()).sum()))
        assert np.median(broad) >= 3, broad


def test_2d_triangle_is_flat_filled(renderer_2d):
    frames, _ = renderer_2d.render(1)
    inside = frames[..., 0][frames[..., 0] > 0]
    assert (inside == 255).mean() > 0.7


@pytest.mark.parametrize("bad, message", [
    ({"kind": "4d"}, "kind='4d' is unknown"),
    ({"size": 0}, "size=0 must be a positive"),
    ({"frames": -3}, "frames=-3 must be a positive"),
    ({"num_sequences": 0}, "num_sequences=0"),
    ({"channels": 2}, "channels=2 is not supported"),
    ({"base_range": (2.0, 1.0)}, "empty range"),
    ({"spin_range_3d": (5.0, 1.0)}, "empty range"),
    ({"cubes_range": (2, 9)}, "outside what the polycube enumerator supports"),
    ({"cubes_range": (0, 3)}, "outside what the polycube enumerator supports"),
    ({"val_fraction": 0.6, "test_fraction": 0.5}, "must leave sequences for train"),
])
def test_bad_render_configs_are_refused_with_a_clear_message(bad, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RenderConfig(**bad)
