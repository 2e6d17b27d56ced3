"""`vxmtf.ops.integrate_velocity`: unrolled and loop forms against a SciPy oracle."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage

from vxmtf.ops.integrate import integrate_velocity


def smooth_velocity(shape, amplitude, seed):
    rng = np.random.default_rng(seed)
    v = np.stack(
        [ndimage.gaussian_filter(rng.normal(size=shape), 2.0) for _ in range(len(shape))],
        axis=-1,
    )
    return (v * amplitude / np.abs(v).max())[None]


def scipy_scaling_and_squaring(velocity, steps):
    """u <- u + u(x + u(x)), sampled by `ndimage.map_coordinates` (order 1, edge replicated)."""
    u = velocity[0] / 2**steps
    shape = u.shape[:-1]
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    for _ in range(steps):
        points = np.moveaxis(grid + u, -1, 0)
        sampled = [
            ndimage.map_coordinates(u[..., c], points, order=1, mode="nearest")
            for c in range(u.shape[-1])
        ]
        u = u + np.stack(sampled, axis=-1)
    return u[None]


def run(velocity, steps, method, jit_compile):
    function = tf.function(
        lambda v: integrate_velocity(v, steps, method=method),
        jit_compile=jit_compile,
        autograph=False,
    )
    return function(tf.constant(velocity)).numpy()


@pytest.mark.parametrize("method", ["unrolled", "loop", "auto"])
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("shape", [(14, 12), (10, 9, 8)])
def test_matches_scipy_oracle(method, jit_compile, shape):
    velocity = smooth_velocity(shape, 3.0, seed=len(shape))
    expected = scipy_scaling_and_squaring(velocity, 5)
    out = run(velocity.astype(np.float32), 5, method, jit_compile)
    assert np.abs(expected).max() > 1.0
    np.testing.assert_allclose(out, expected, atol=2e-4)


def loss_and_gradient(velocity, upstream, method, jit_compile):
    def fn(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss = tf.reduce_sum(integrate_velocity(v, 4, method=method) * upstream)
        return loss, tape.gradient(loss, v)

    loss, gradient = tf.function(fn, jit_compile=jit_compile, autograph=False)(
        tf.constant(velocity)
    )
    return loss.numpy(), gradient.numpy()


def loss(velocity, upstream):
    """The loss in float64, eagerly: the finite differences' reference."""
    return float(tf.reduce_sum(integrate_velocity(velocity, 4, method="unrolled") * upstream))


@pytest.mark.parametrize("method", ["unrolled", "loop"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_gradient_matches_finite_differences(method, jit_compile):
    shape = (7, 6, 5)
    velocity = smooth_velocity(shape, 2.0, seed=7)  # float64: the sums are exact enough
    upstream = np.random.default_rng(8).normal(size=velocity.shape)
    _, gradient = loss_and_gradient(velocity, upstream, method, jit_compile)
    rng = np.random.default_rng(9)
    eps = 1e-6
    for _ in range(12):
        index = tuple(rng.integers(0, n) for n in velocity.shape)
        plus, minus = velocity.copy(), velocity.copy()
        plus[index] += eps
        minus[index] -= eps
        numeric = (loss(plus, upstream) - loss(minus, upstream)) / (2 * eps)
        assert gradient[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_auto_loops_only_under_xla_without_a_tape():
    # "auto" relies on two TensorFlow hooks (vxmtf/ops/_xla.py); this fails if either is gone.
    spec = tf.TensorSpec((1, 6, 6, 6, 3), tf.float32)

    def forward(v):
        return integrate_velocity(v, 7)

    def gradient(v):
        with tf.GradientTape() as tape:
            tape.watch(v)
            u = integrate_velocity(v, 7)
        return tape.gradient(u, v)

    def has_loop(fn, jit_compile):
        function = tf.function(fn, jit_compile=jit_compile, autograph=False)
        graph = function.get_concrete_function(spec).graph
        return bool({op.type for op in graph.get_operations()} & {"While", "StatelessWhile"})

    assert not has_loop(forward, False)
    assert has_loop(forward, True)
    assert not has_loop(gradient, True)
    assert not has_loop(gradient, False)


def test_steps_zero_and_bad_method():
    v = smooth_velocity((6, 6), 1.0, seed=0).astype(np.float32)
    np.testing.assert_array_equal(integrate_velocity(v, 0, method="loop").numpy(), v)
    with pytest.raises(ValueError, match="Received: method='scan'"):
        integrate_velocity(v, 3, method="scan")
