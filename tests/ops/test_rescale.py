"""`vxmtf.ops.rescale_field` against SciPy: N-linear, voxel centres, border clamped, scaled."""

import numpy as np
import pytest
from scipy import ndimage

from vxmtf.ops import rescale_field


def scipy_rescale(field, out_shape):
    """Oracle: every component sampled by `map_coordinates(order=1, mode="nearest")` at
    `(y + 0.5) * n / m - 0.5` per axis, then multiplied by `m_k / n_k`."""
    in_shape = field.shape[:-1]
    axes = [(np.arange(m) + 0.5) * n / m - 0.5 for n, m in zip(in_shape, out_shape, strict=True)]
    coords = np.meshgrid(*axes, indexing="ij")
    out = np.stack(
        [
            ndimage.map_coordinates(field[..., c], coords, order=1, mode="nearest")
            for c in range(field.shape[-1])
        ],
        axis=-1,
    )
    return out * (np.asarray(out_shape) / np.asarray(in_shape))


@pytest.mark.parametrize(
    ("in_shape", "out_shape"),
    [((5, 7), (10, 14)), ((12, 9), (6, 3)), ((4, 6, 5), (8, 12, 10)), ((6, 5, 7), (3, 9, 4))],
)
def test_matches_scipy_everywhere_including_borders(in_shape, out_shape):
    rng = np.random.default_rng(len(in_shape) + sum(out_shape))
    field = rng.normal(size=(2, *in_shape, len(in_shape))).astype(np.float64)
    out = rescale_field(field.astype(np.float32), out_shape=out_shape).numpy()
    assert out.shape == (2, *out_shape, len(in_shape))
    for b in range(2):
        np.testing.assert_allclose(out[b], scipy_rescale(field[b], out_shape), atol=2e-5)


def test_factor_and_out_shape_agree():
    field = np.random.default_rng(0).normal(size=(1, 6, 8, 4, 3)).astype(np.float32)
    by_factor = rescale_field(field, factor=2).numpy()
    by_shape = rescale_field(field, out_shape=(12, 16, 8)).numpy()
    np.testing.assert_array_equal(by_factor, by_shape)
