"""`benchmarks.first_run`: the oracle's inverse deformation, and the variants' options."""

import numpy as np
import pytest
from scipy import ndimage

from benchmarks import first_run
from train.__main__ import build_parser
from vxmtf.data.synthetic import SyntheticPairs, smooth_noise


def test_the_inverse_of_a_shift_is_the_opposite_shift():
    u = np.zeros((3, 12, 12, 12), np.float32)
    u[0], u[2] = 1.5, -0.25
    v = first_run.invert_displacement(u)
    np.testing.assert_allclose(v[:, 3:-3, 3:-3, 3:-3], -u[:, 3:-3, 3:-3, 3:-3], atol=1e-6)


def test_the_inverse_composes_to_the_identity():
    rng = np.random.default_rng(0)
    u = 1.5 * smooth_noise(rng, (24, 24), 2, 8.0)  # |grad u| well below 1
    v = first_run.invert_displacement(u)
    grid = np.indices((24, 24), dtype=np.float32)
    # x + v(x) + u(x + v(x)) = x, away from the clamped edges.
    u_at = np.stack([ndimage.map_coordinates(c, grid + v, order=1, mode="nearest") for c in u])
    residual = np.abs(v + u_at)[:, 4:-4, 4:-4]
    assert residual.max() < 0.02 and np.abs(v).max() > 1.0


def test_atlas_displacement_is_the_deformation_of_the_moving_scan():
    pairs = SyntheticPairs((16, 16, 16), num_labels=4, seed=3, num_val=2)
    u = pairs.atlas_displacement(1, "val")
    assert u.shape == (3, 16, 16, 16) and u.std() > 0.3
    warped = ndimage.map_coordinates(
        pairs.atlas()["labels"], np.indices((16, 16, 16)) + u, order=0, mode="nearest"
    )
    np.testing.assert_array_equal(warped, pairs.atlas_pair(1, "val")["moving_labels"])
    with pytest.raises(IndexError, match="index < 2"):
        pairs.atlas_displacement(2, "val")


def test_every_variant_is_a_valid_train_command_line():
    parser = build_parser()
    for name, options in first_run.SETTINGS.items():
        args = parser.parse_args(options)
        assert args.data is None, name
    previous = parser.parse_args(first_run.SETTINGS["previous"])
    assert (previous.lr, previous.lr_schedule, previous.reg_weight) == (1e-3, "constant", 1.0)
    assert (previous.synthetic_smoothness, previous.steps_per_epoch) == (8.0, 150)
