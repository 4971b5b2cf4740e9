import numpy as np
import pytest

from framecast.render import polycubes


@pytest.mark.parametrize("n, count", [(1, 1), (2, 1), (3, 2), (4, 8), (5, 29), (6, 166)])
def test_enumerator_yields_known_counts_up_to_rotation(n, count):
    shapes = polycubes.enumerate_polycubes(n)
    assert len(shapes) == count
    assert len(set(shapes)) == count
    assert all(len(s) == n for s in shapes)


def test_rotation_group_has_24_distinct_proper_rotations():
    mats = polycubes.ROTATIONS
    assert mats.shape == (24, 3, 3)
    assert len({m.tobytes() for m in mats}) == 24
    assert np.allclose([np.linalg.det(m) for m in mats], 1.0)


def test_canonical_form_is_invariant_under_every_rotation_and_shift():
    shape = polycubes.enumerate_polycubes(5)[7]
    for m in polycubes.ROTATIONS:
        moved = np.asarray(shape) @ m.T + np.array([3, -2, 5])
        assert polycubes.canonical(moved) == shape


def test_mirror_images_stay_distinct():
    # The two chiral tetracubes: one is the mirror image of the other, not a rotation of it.
    shapes = polycubes.enumerate_polycubes(4)
    mirrored = {polycubes.canonical(np.asarray(s) * np.array([-1, 1, 1])) for s in shapes}
    assert mirrored == set(shapes)
    assert sum(polycubes.canonical(np.asarray(s) * np.array([-1, 1, 1])) != s
               for s in shapes) == 2


def test_shapes_are_face_connected():
    for shape in polycubes.enumerate_polycubes(5):
        cells, seen, todo = set(shape), {shape[0]}, [shape[0]]
        while todo:
            x, y, z = todo.pop()
            for dx, dy, dz in ((1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)):
                nxt = (x + dx, y + dy, z + dz)
                if nxt in cells and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert seen == cells


def test_sizes_outside_the_enumerator_are_refused():
    with pytest.raises(ValueError, match="outside the supported range"):
        polycubes.enumerate_polycubes(polycubes.MAX_CUBES + 1)
    with pytest.raises(ValueError, match="n=0 is outside the supported range"):
        polycubes.enumerate_polycubes(0)


def test_worst_case_radius_is_the_straight_rod():
    # A rod of 6 cubes reaches sqrt(3^2 + 0.5^2 + 0.5^2) from its centre.
    assert polycubes.max_bounding_radius(6) == pytest.approx(np.sqrt(9.5))


def test_axis_angle_rotates_by_the_vector_norm_about_its_axis():
    r = polycubes.axis_angle(np.array([0.0, 0.0, 90.0]))
    assert np.allclose(r @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    r = polycubes.axis_angle(np.array([30.0, -40.0, 0.0]))  # 50 degrees about (0.6, -0.8, 0)
    assert np.allclose(r @ [0.6, -0.8, 0.0], [0.6, -0.8, 0.0])
    assert np.isclose(np.degrees(np.arccos((np.trace(r) - 1) / 2)), 50.0)


def test_random_rotation_is_orthonormal():
    r = polycubes.random_rotation(np.random.default_rng(3))
    assert np.allclose(r @ r.T, np.eye(3)) and np.isclose(np.linalg.det(r), 1.0)
