"""Radiological conventions: camera directions, edge letters, 3D handedness, status text."""

import itertools

import numpy as np
import pytest

from napari_medattn.display.orientation import (
    canonical_pair,
    depth_direction_3d,
    edge_letters,
    patient_position_text,
    radiological_orientation_2d,
)
from napari_medattn.errors import DimensionError

AXIAL, CORONAL, SAGITTAL = (1, 2), (0, 2), (0, 1)


@pytest.mark.parametrize("pair, letters", [
    (AXIAL, {"top": "A", "bottom": "P", "left": "R", "right": "L"}),
    (CORONAL, {"top": "S", "bottom": "I", "left": "R", "right": "L"}),
    (SAGITTAL, {"top": "S", "bottom": "I", "left": "A", "right": "P"}),
])
def test_radiological_views_put_the_expected_letters_on_each_edge(pair, letters):
    assert edge_letters(*pair, *radiological_orientation_2d(*pair)) == letters


def test_letters_follow_a_flipped_camera():
    assert edge_letters(1, 2, "up", "left") == {"top": "P", "bottom": "A",
                                                "left": "L", "right": "R"}


def test_pairs_are_made_canonical_and_others_refused():
    assert canonical_pair((2, 1)) == AXIAL
    assert canonical_pair((2, 0)) == CORONAL
    assert canonical_pair((0, 1)) == SAGITTAL
    with pytest.raises(DimensionError):
        radiological_orientation_2d(2, 1)


def _screen_to_lps(displayed, vertical_dir, horizontal_dir, depth_dir):
    # Columns: screen right, down, away written in LPS.
    lps_of_world = {0: 2, 1: 1, 2: 0}
    m = np.zeros((3, 3))
    m[lps_of_world[displayed[2]], 0] = 1 if horizontal_dir == "right" else -1
    m[lps_of_world[displayed[1]], 1] = 1 if vertical_dir == "down" else -1
    m[lps_of_world[displayed[0]], 2] = 1 if depth_dir == "away" else -1
    return m


@pytest.mark.parametrize("displayed", list(itertools.permutations(range(3))))
def test_3d_depth_makes_a_rotation_not_a_mirror(displayed):
    depth = depth_direction_3d(displayed, "down", "right")
    assert np.linalg.det(_screen_to_lps(displayed, "down", "right", depth)) == 1
    # The standard view down the z axis: looking from the feet (radiological axial).
    if displayed == (0, 1, 2):
        assert depth == "away"


def test_patient_position_text_names_the_side_of_each_coordinate():
    # world (z, y, x) = LPS (x=-12, y=-30.5, z=40): right, anterior, superior.
    assert patient_position_text((40.0, -30.5, -12.0)) == "R 12.0  A 30.5  S 40.0 mm"
    assert patient_position_text((-7.25, 3.0, 5.0)) == "L 5.0  P 3.0  I 7.2 mm"
