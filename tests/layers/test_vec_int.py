"""`vxmtf.layers.VecInt`: scaling and squaring."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from vxmtf.layers import VecInt
from vxmtf.ops import warp


def smooth_velocity(shape, amplitude, seed):
    rng = np.random.default_rng(seed)
    ndim = len(shape)
    v = np.stack(
        [ndimage.gaussian_filter(rng.normal(size=shape), 3.0, mode="nearest") for _ in range(ndim)],
        axis=-1,
    )
    return (v * amplitude / np.abs(v).max())[None].astype(np.float32)


@pytest.mark.parametrize("shape", [(12, 10), (8, 9, 10)])
def test_zero_field_gives_zero(shape):
    out = VecInt(7)(tf.zeros((2, *shape, len(shape))))
    np.testing.assert_array_equal(out.numpy(), 0.0)


@pytest.mark.parametrize("shape", [(12, 10), (8, 9, 10)])
def test_constant_velocity_gives_translation(shape):
    ndim = len(shape)
    t = np.array([1.7, -0.6, 0.9][:ndim], np.float32)
    velocity = np.broadcast_to(t, (1, *shape, ndim))
    out = VecInt(7)(velocity).numpy()
    np.testing.assert_allclose(out, velocity, atol=1e-5)


def test_steps_zero_is_identity_map():
    v = smooth_velocity((8, 8, 8), 2.0, 0)
    np.testing.assert_array_equal(VecInt(0)(v).numpy(), v)


def test_integrating_v_and_minus_v_compose_to_identity():
    """phi_v o phi_-v ~ id: u(x) + u_v(x + u(x)) ~ 0 with u = integral of -v."""
    shape = (24, 24, 24)
    v = smooth_velocity(shape, 2.0, 1)
    forward = VecInt(7)(v)
    backward = VecInt(7)(-v)
    composed = backward + warp(forward, backward)
    inner = composed.numpy()[0, 4:-4, 4:-4, 4:-4]
    # The deformation is up to ~2 voxels; its inverse composition is ~1/100 of that.
    assert np.abs(forward.numpy()).max() > 1.0
    assert np.abs(inner).max() < 0.05


def test_matches_ode_integration():
    """Scaling and squaring approximates the time-1 flow of dx/dt = v(x) (Euler, tiny steps)."""
    shape = (20, 20)
    v = smooth_velocity(shape, 1.5, 2)
    n = 512
    disp = np.zeros_like(v)
    for _ in range(n):  # x(t + h) = x(t) + h v(x(t)), tracked as a displacement field
        disp = disp + warp(v, disp).numpy() / n
    out = VecInt(10)(v).numpy()
    np.testing.assert_allclose(out[0, 3:-3, 3:-3], disp[0, 3:-3, 3:-3], atol=0.03)


def test_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        out = VecInt(3)(tf.ones((1, 4, 4, 2), tf.float16))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert out.dtype == tf.float32


def test_config_and_errors():
    layer = VecInt(5, name="int")
    assert VecInt.from_config(layer.get_config()).steps == 5
    with pytest.raises(ValueError, match="Received: steps=-1"):
        VecInt(-1)
    with pytest.raises(ValueError, match="with 2 channels"):
        VecInt(3)(tf.zeros((1, 4, 4, 3)))
