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


def scipy_jacobian(in_shape, out_shape):
    """The linear map of `scipy_rescale` as a matrix, one column per input element."""
    ndim = len(in_shape)
    size = int(np.prod(in_shape)) * ndim
    columns = []
    for k in range(size):
        basis = np.zeros(size)
        basis[k] = 1.0
        columns.append(scipy_rescale(basis.reshape(*in_shape, ndim), out_shape).ravel())
    return np.stack(columns, axis=1)  # (outputs, inputs)


@pytest.mark.parametrize(
    ("method", "mode"),
    [
        ("auto", "graph"),
        ("auto", "xla"),
        ("auto", "unknown_shape"),
        ("gather", "graph"),
        ("gather", "xla"),
        ("product", "graph"),
    ],
)
@pytest.mark.parametrize(
    ("in_shape", "out_shape"), [((5, 7), (10, 3)), ((3, 4, 2), (6, 8, 5)), ((6, 5, 4), (3, 5, 2))]
)
def test_value_and_gradient_match_the_scipy_map(in_shape, out_shape, method, mode):
    """Every code path (gathers with a matrix-product gradient; products; gathers
    differentiated by TensorFlow) gives the SciPy oracle's values, and its gradient is the
    oracle's transposed map J^T."""
    import tensorflow as tf

    rng = np.random.default_rng(sum(in_shape) + sum(out_shape))
    ndim = len(in_shape)
    field = rng.normal(size=(2, *in_shape, ndim)).astype(np.float32)
    upstream = rng.normal(size=(2, *out_shape, ndim)).astype(np.float32)
    spec = tf.TensorSpec([None] * (ndim + 1) + [ndim]) if mode == "unknown_shape" else None

    @tf.function(jit_compile=mode == "xla", input_signature=None if spec is None else [spec])
    def value_and_gradient(field):
        with tf.GradientTape() as tape:
            tape.watch(field)
            out = rescale_field(field, out_shape=out_shape, method=method)
            value = tf.reduce_sum(out * upstream)
        return out, tape.gradient(value, field)

    out, gradient = (t.numpy() for t in value_and_gradient(tf.constant(field)))
    jacobian = scipy_jacobian(in_shape, out_shape)
    for b in range(2):
        np.testing.assert_allclose(out[b], scipy_rescale(field[b], out_shape), atol=2e-5)
        expected = (jacobian.T @ upstream[b].ravel()).reshape(*in_shape, ndim)
        np.testing.assert_allclose(gradient[b], expected, atol=2e-5)


def test_bad_method_and_product_without_static_sizes_are_named():
    import tensorflow as tf

    field = np.zeros((1, 4, 4, 2), np.float32)
    with pytest.raises(ValueError, match="method"):
        rescale_field(field, factor=2, method="cubic")

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 2])])
    def unknown(field):
        return rescale_field(field, out_shape=(8, 8), method="product")

    with pytest.raises(ValueError, match="known while tracing"):
        unknown(tf.constant(field))
