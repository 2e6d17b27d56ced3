"""`vxmtf.layers.RescaleTransform`: resize a field and scale its vectors."""

import numpy as np
import pytest
import tensorflow as tf

from vxmtf.layers import RescaleTransform


@pytest.mark.parametrize("shape", [(8, 6), (4, 6, 8)])
def test_constant_field_scales_vectors(shape):
    ndim = len(shape)
    t = np.array([0.5, -1.0, 2.0][:ndim], np.float32)
    field = np.broadcast_to(t, (2, *shape, ndim))
    up = RescaleTransform(2)(field).numpy()
    assert up.shape == (2, *(2 * s for s in shape), ndim)
    np.testing.assert_allclose(up, 2 * np.broadcast_to(t, up.shape), atol=1e-6)
    down = RescaleTransform(0.5)(field).numpy()
    assert down.shape == (2, *(s // 2 for s in shape), ndim)
    np.testing.assert_allclose(down, 0.5 * np.broadcast_to(t, down.shape), atol=1e-6)


def test_affine_field_is_consistent_across_grids():
    """An affine map resized to a 2x grid is the same physical map (voxel-centre convention).

    Coarse voxel c sits at fine position y = 2c + 0.5. If the coarse field maps c -> c + u(c)
    with u linear, the fine field must map y -> y + 2 u((y + 0.5) / 2 - 0.5).
    """
    rng = np.random.default_rng(0)
    shape = (6, 5, 7)
    a = rng.uniform(-0.2, 0.2, size=(3, 3))
    b = rng.uniform(-1, 1, size=3)
    coarse_grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    coarse = (coarse_grid @ a.T + b)[None].astype(np.float32)
    fine = RescaleTransform(2)(coarse).numpy()[0]
    fine_grid = np.stack(np.meshgrid(*[np.arange(2 * s) for s in shape], indexing="ij"), -1)
    expected = 2 * (((fine_grid + 0.5) / 2 - 0.5) @ a.T + b)
    inner = (slice(1, -1),) * 3  # border voxels are clamped, not extrapolated
    np.testing.assert_allclose(fine[inner], expected[inner], atol=1e-5)


def test_halving_averages_blocks():
    field = np.random.default_rng(1).normal(size=(1, 8, 6, 2)).astype(np.float32)
    down = RescaleTransform(0.5)(field).numpy()
    blocks = field.reshape(1, 4, 2, 3, 2, 2).mean(axis=(2, 4))
    np.testing.assert_allclose(down, 0.5 * blocks, atol=1e-6)


def test_unknown_spatial_sizes():
    layer = RescaleTransform(2)
    fn = tf.function(layer, input_signature=[tf.TensorSpec([None, None, None, 2])])
    assert fn(tf.zeros((1, 3, 5, 2))).shape == (1, 6, 10, 2)
    assert layer.compute_output_shape((None, None, 4, 2)) == (None, None, 8, 2)


def test_errors_and_config():
    assert RescaleTransform.from_config(RescaleTransform(0.5).get_config()).factor == 0.5
    with pytest.raises(ValueError, match="Received: factor=0"):
        RescaleTransform(0)
