"""Resizing of displacement fields between grids."""

import tensorflow as tf

from vxmtf.checks import check_choice
from vxmtf.ops._xla import in_xla_context

_METHODS = ("auto", "gather", "product")


def rescale_field(field, factor=None, out_shape=None, method="auto"):
    """Resize a displacement field to another grid and scale its vectors to that grid's voxels.

    Voxel-centre ("half-pixel") convention, the one `tf.image.resize` uses by default: output
    voxel `y` along an axis of input size `n` and output size `m` samples the input at
    `x = (y + 0.5) * n / m - 0.5` (N-linear, border clamped), and component k is multiplied by
    `m_k / n_k`. Halving a grid this way averages 2-voxel blocks; doubling it interpolates.

    N-linear interpolation with border clamping is the tensor product of 1-D linear
    interpolations, so the field is resized one axis at a time, each pass a linear map
    ``x -> W x`` along that axis with ``W`` the ``(m, n)`` matrix of `_interpolation_matrix`
    (two non-zeros per row). `method` says how it is applied; the values are the same:

    - ``"gather"``: two gathers and a blend per axis, O(1) work per output for any size; as
      TensorFlow differentiates it, its gradient is an unsorted segment sum over every output
      element, the dearest part of a refinement step at full resolution.
    - ``"product"``: a matrix product with ``W`` (its gradient one with ``W^T``), ``n``
      multiply-adds per output but run by the matrix-multiply kernels.
    - ``"auto"`` (default): when the sizes are known while tracing, the gathers forward and
      ``W^T`` backward outside XLA, and products both ways inside XLA (which would otherwise fuse
      the gathers into the warp that reads the resized field and redo them for every corner);
      ``"gather"`` when the sizes are known only at run time. Measured on a 2-core Xeon with
      XLA (`python -m benchmarks.bench_rescale`): a full-resolution refinement step (velocity
      40x48x40, images 160x192x160) 0.86 s with ``"gather"``, 0.66 s with ``"auto"``.

    Args:
        field: `(batch, *spatial, ndim)` displacement in input voxels.
        factor: positive number, output size = round(input size * factor) on every axis.
        out_shape: alternative to `factor`: the `ndim` output sizes (ints or an int tensor).
        method: ``"auto"``, ``"gather"`` or ``"product"`` (``"product"`` needs sizes known
            while tracing).

    Returns:
        `(batch, *out_spatial, ndim)` float32 displacement in output voxels.

    Raises:
        ValueError: both or neither of `factor` and `out_shape`, an unknown `method`, or
            ``"product"`` with sizes unknown while tracing.
    """
    if (factor is None) == (out_shape is None):
        raise ValueError(
            "Give exactly one of `factor` and `out_shape`. "
            f"Received: factor={factor}, out_shape={out_shape}"
        )
    check_choice("method", method, _METHODS)
    field = tf.cast(field, tf.float32)
    ndim = field.shape[-1]
    in_sizes = tf.shape(field)[1 : ndim + 1]
    if factor is not None:
        if factor == 1:
            return field
        out_sizes = tf.cast(tf.round(tf.cast(in_sizes, tf.float32) * float(factor)), tf.int32)
    else:
        out_sizes = tf.convert_to_tensor(out_shape, dtype=tf.int32)
    scale = tf.cast(out_sizes, tf.float32) / tf.cast(in_sizes, tf.float32)  # (ndim,)
    static_in = _static_sizes(field.shape[1 : ndim + 1])
    if factor is None:
        static_out = _static_sizes(out_shape)
    else:
        static_out = None if static_in is None else [round(n * float(factor)) for n in static_in]
    static = static_in is not None and static_out is not None
    if method == "product" and not static:
        raise ValueError(
            "`method='product'` needs spatial sizes known while tracing. Received: "
            f"field.shape={field.shape}, out_shape={out_shape}, factor={factor}"
        )
    for k in range(ndim):
        if method == "gather" or not static:
            field = _resize_axis(field, k + 1, in_sizes[k], out_sizes[k], scale[k])
        else:
            product = method == "product" or in_xla_context()
            field = _resize_axis_static(
                field, k + 1, static_in[k], static_out[k], scale[k], product
            )
    return field * scale


def _static_sizes(sizes):
    """`sizes` as a list of Python ints, or None when any is unknown until run time."""
    if tf.is_tensor(sizes):
        sizes = tf.get_static_value(sizes)
        if sizes is None:
            return None
    sizes = list(sizes)
    if any(s is None for s in sizes):
        return None
    return [int(s) for s in sizes]


def _interpolation_matrix(in_size, out_size):
    """``(out_size, in_size)`` float32 NumPy ``W`` of `_resize_axis` (``x -> W x``): the
    resize applied to the identity's rows, computed eagerly even while tracing, so the two
    paths share one position rule."""
    with tf.init_scope():
        identity = tf.eye(in_size, dtype=tf.float32)
        return _resize_axis(identity, 0, in_size, out_size, out_size / in_size).numpy()


def _resize_axis_static(x, axis, in_size, out_size, scale, product):
    """`_resize_axis` for sizes known while tracing: the product ``x -> W x`` along `axis`
    with the constant ``W = _interpolation_matrix(in_size, out_size)`` when `product`, else the
    gathers (`scale` is ``out_size / in_size``, as `_resize_axis` takes it); either way
    differentiated as the product with ``W^T``."""
    if in_size == out_size:
        return x
    matrix = _interpolation_matrix(in_size, out_size)
    if product:
        return _apply_along(tf.constant(matrix), x, axis)  # differentiated as a product

    @tf.custom_gradient
    def resize(x):
        def grad(upstream):
            return _apply_along(tf.constant(matrix.T), upstream, axis)

        return _resize_axis(x, axis, in_size, out_size, scale), grad

    return resize(x)


def _resize_axis(x, axis, in_size, out_size, scale):
    """Linear resize of `x` along `axis` from `in_size` to `out_size` voxels (voxel centres,
    border clamped): output voxel `y` reads input position `(y + 0.5) / scale - 0.5`."""
    position = (tf.range(out_size, dtype=tf.float32) + 0.5) / scale - 0.5  # (out_size,)
    lower = tf.floor(position)
    frac = position - lower
    lower = tf.cast(lower, tf.int32)
    first = tf.gather(x, tf.clip_by_value(lower, 0, in_size - 1), axis=axis)
    second = tf.gather(x, tf.clip_by_value(lower + 1, 0, in_size - 1), axis=axis)
    # Weights broadcast along `axis`: shape (1, ..., out_size, ..., 1).
    shape = [1] * x.shape.rank
    shape[axis] = -1
    return first + (second - first) * tf.reshape(frac, shape)


def _apply_along(matrix, x, axis):
    """``out[..., r, ...] = sum_c matrix[r, c] x[..., c, ...]`` along `axis` of `x`."""
    letters = "abcdefgh"[: x.shape.rank]
    source = letters.replace(letters[axis], "z")  # z: the contracted index
    return tf.einsum(f"{letters[axis]}z,{source}->{letters}", matrix, x)
