"""Batched N-linear and nearest-neighbour resampling (2D and 3D).

`resample` reads an image at arbitrary voxel coordinates for the whole batch with one flat
`tf.gather` per interpolation corner: no per-sample loop, so it is cheap, differentiable with
respect to the image and the coordinates, and compiles under XLA. Coordinates and interpolation
weights are always float32, whatever the image's dtype (float16 coordinates cannot represent
sub-voxel positions in volumes larger than 2048 voxels, and lose precision long before);
float64 coordinates stay float64 (used by the gradient checks).
"""

import itertools

import tensorflow as tf

from vxmtf.checks import check_choice
from vxmtf.ops.grid import identity_grid

INTERPOLATIONS = ("linear", "nearest")
#: Bytes of temporaries per output voxel of a 3D N-linear warp (`resample` holds the
#: coordinates, and indices and weights of each axis and corner, as separate tensors).
WARP_BYTES_PER_VOXEL = 128
#: Temporaries of one chunk of a warp by rows (`warp(..., rows=warp_rows(shape))`).
WARP_CHUNK_BYTES = 128 * 2**20


def resample(image, coords, interpolation="linear", fill_value=None):
    """Sample `image` at voxel coordinates `coords`.

    For linear interpolation, with `c = coords[b, y]`, `c0 = floor(c)` and `t = c - c0`:

        out[b, y] = sum over corners s in {0, 1}^ndim of
                    prod_k (t_k if s_k else 1 - t_k) * image[b, c0 + s]

    Corners outside the image read the nearest border voxel when `fill_value` is None (SciPy's
    `map_coordinates(mode="nearest")`) or the constant `fill_value` otherwise (SciPy's
    `mode="grid-constant"`), so the result is continuous in the coordinates either way.
    Nearest-neighbour rounds each coordinate to the closest voxel centre.

    Coordinates of any size keep these rules: they are clamped in floating point before the
    integer cast, so one past int32 (about 2.1e9) reads the border (or `fill_value`) on its own
    side instead of wrapping around. A non-finite coordinate (NaN, +-Inf) on any axis gives a
    NaN sample for a floating-point image, in both interpolations (linear: its weights are NaN);
    an integer image (nearest only) has no NaN and takes `fill_value` there, or 0 when
    `fill_value` is None (never the value of some voxel).

    Args:
        image: `(batch, *in_spatial, channels)`, any dtype for "nearest", float for "linear".
        coords: `(batch, *out_spatial, ndim)` voxel coordinates into `in_spatial`, "ij" order.
        interpolation: "linear" or "nearest".
        fill_value: None to clamp to the border, or a number used outside the image.

    Returns:
        `(batch, *out_spatial, channels)`, of the image's dtype.
    """
    check_choice("interpolation", interpolation, INTERPOLATIONS)
    image = tf.convert_to_tensor(image)
    coords = tf.convert_to_tensor(coords)
    compute = coordinate_dtype(coords.dtype)
    coords = tf.cast(coords, compute)
    ndim = coords.shape[-1]

    image_shape = tf.shape(image)
    batch = image_shape[0]
    sizes = [image_shape[k + 1] for k in range(ndim)]
    channels = image_shape[-1]
    # Flat view of the whole batch: (batch * prod(in_spatial), channels).
    flat_image = tf.reshape(image, tf.stack([-1, channels]))
    strides = [tf.reduce_prod(image_shape[k + 2 : ndim + 1]) for k in range(ndim)]
    voxels = tf.reduce_prod(image_shape[1 : ndim + 1])
    # Offset of each sample in the flat view, broadcastable against (batch, *out_spatial).
    batch_offset = tf.reshape(tf.range(batch) * voxels, [-1] + [1] * ndim)
    comps = tf.unstack(coords, num=ndim, axis=-1)  # ndim x (batch, *out_spatial)

    if interpolation == "nearest":
        flat_index = batch_offset
        inside = None
        finite = None
        for k in range(ndim):
            # Clamped before the cast (-1 and size lie outside): no int32 wrap-around.
            nearest = _clamp(tf.floor(comps[k] + 0.5), -1, sizes[k])
            index = tf.cast(nearest, tf.int32)
            inside = _and(inside, _inside(index, sizes[k]), fill_value)
            flat_index = flat_index + tf.clip_by_value(index, 0, sizes[k] - 1) * strides[k]
            axis_finite = tf.math.is_finite(comps[k])
            finite = axis_finite if finite is None else tf.logical_and(finite, axis_finite)
        values = tf.gather(flat_image, flat_index)  # (batch, *out_spatial, channels)
        if fill_value is not None:
            fill = tf.cast(fill_value, values.dtype)
            values = tf.where(inside[..., None], values, fill)
        # A non-finite coordinate names no voxel: NaN (as linear gives), or the fill (0).
        if values.dtype.is_floating:
            undefined = tf.constant(float("nan"), values.dtype)
        else:
            undefined = tf.cast(0 if fill_value is None else fill_value, values.dtype)
        return tf.where(finite[..., None], values, undefined)

    if not image.dtype.is_floating:
        raise TypeError(
            "Linear interpolation needs a floating-point image; use interpolation='nearest' for "
            f"label maps. Received: image.dtype={image.dtype.name}"
        )
    # Per axis: the two neighbouring indices (offsets in the flat view), their weights, and
    # (with a fill value) whether each lies inside the image. All (batch, *out_spatial).
    axis_terms = []
    for k in range(ndim):
        lower = tf.floor(comps[k])
        frac = comps[k] - lower  # NaN for a non-finite coordinate: so is the sample
        # Clamped before the cast (both neighbours of -2 and of size + 1 lie outside, as those
        # of any coordinate beyond): no int32 wrap-around; the weights keep `frac`.
        lower = tf.cast(_clamp(lower, -2, sizes[k] + 1), tf.int32)
        terms = []
        for step, weight in ((0, 1.0 - frac), (1, frac)):
            index = lower + step
            inside = _inside(index, sizes[k]) if fill_value is not None else None
            offset = tf.clip_by_value(index, 0, sizes[k] - 1) * strides[k]
            terms.append((offset, weight, inside))
        axis_terms.append(terms)

    total = None
    outside_weight = None
    for corner in itertools.product((0, 1), repeat=ndim):
        flat_index = batch_offset
        weight = None
        inside = None
        for k, step in enumerate(corner):
            offset, axis_weight, axis_inside = axis_terms[k][step]
            flat_index = flat_index + offset
            weight = axis_weight if weight is None else weight * axis_weight
            inside = _and(inside, axis_inside, fill_value)
        if fill_value is not None:
            # Corners outside contribute fill_value * weight instead of the border value.
            weight_in = tf.where(inside, weight, 0.0)
            weight_out = weight - weight_in
            outside_weight = weight_out if outside_weight is None else outside_weight + weight_out
            weight = weight_in
        values = tf.cast(tf.gather(flat_image, flat_index), compute)
        term = weight[..., None] * values
        total = term if total is None else total + term
    if fill_value is not None:
        total = total + outside_weight[..., None] * tf.cast(fill_value, compute)
    return tf.cast(total, image.dtype)


def warp(image, displacement, interpolation="linear", fill_value=None, rows=None):
    """Warp `image` by a displacement field: `out[b, x] = image[b, x + displacement[b, x]]`.

    Args:
        image: `(batch, *spatial, channels)`.
        displacement: `(batch, *spatial, ndim)` in voxels, component k along spatial axis k.
        interpolation, fill_value: as in `resample`.
        rows: None computes every output voxel at once. An int >= 1 (or a scalar int tensor of
            a value >= 1, computed in a graph) computes `rows` output rows
            (along the first spatial axis) at a time, each reading the whole image, in a
            `tf.while_loop`: the same values, with the interpolation's temporaries (about
            `WARP_BYTES_PER_VOXEL` per output voxel in 3D) held for one chunk only (`warp_rows`
            chooses `rows` for a memory budget).

    Returns:
        `(batch, *spatial, channels)`, of the image's dtype.
    """
    if tf.is_tensor(rows):
        if rows.shape.rank != 0 or not rows.dtype.is_integer:
            raise ValueError(f"`rows` must be a scalar int tensor. Received: rows={rows!r}")
    elif rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise ValueError(f"`rows` must be None or an int >= 1. Received: rows={rows!r}")
    displacement = tf.convert_to_tensor(displacement)
    displacement = tf.cast(displacement, coordinate_dtype(displacement.dtype))
    ndim = displacement.shape[-1]
    if rows is None:
        grid = identity_grid(tf.shape(displacement)[1 : ndim + 1], displacement.dtype)
        return resample(image, grid + displacement, interpolation, fill_value)
    return _warp_by_rows(tf.convert_to_tensor(image), displacement, interpolation, fill_value, rows)


def _warp_by_rows(image, displacement, interpolation, fill_value, rows):
    ndim = displacement.shape[-1]
    size = tf.shape(displacement)[1]
    steps = (size + rows - 1) // rows
    # Moves a chunk's grid to its rows: + first along axis 0. Integers, so that the sum equals
    # the whole warp's `grid + displacement` exactly.
    axis0 = tf.one_hot(0, ndim, dtype=displacement.dtype)  # (ndim,)
    order = [1, 0, *range(2, ndim + 2)]  # (batch, rows, ...) <-> (rows, batch, ...)

    def body(t, out):
        first = t * rows
        part = displacement[:, first : first + rows]  # (batch, rows_t, *rest, ndim)
        grid = identity_grid(tf.shape(part)[1 : ndim + 1], displacement.dtype)
        grid += tf.cast(first, displacement.dtype) * axis0
        values = resample(image, grid + part, interpolation, fill_value)
        return t + 1, out.write(t, tf.transpose(values, order))  # (rows_t, batch, *rest, c)

    out = tf.TensorArray(image.dtype, size=steps, infer_shape=False)
    _, out = tf.while_loop(
        lambda t, _: t < steps, body, (tf.constant(0), out), parallel_iterations=1
    )
    return tf.transpose(out.concat(), order)  # (batch, *spatial, channels)


def warp_rows(shape, budget=WARP_CHUNK_BYTES):
    """Rows (first spatial axis) per chunk of `warp(..., rows=...)` for a volume of spatial
    `shape`: about `budget` bytes of temporaries per chunk (`WARP_BYTES_PER_VOXEL` per output
    voxel), at least 1."""
    row_voxels = 1
    for size in tuple(shape)[1:]:
        row_voxels *= int(size)
    return max(1, int(budget) // (WARP_BYTES_PER_VOXEL * row_voxels))


def coordinate_dtype(dtype):
    """float64 stays float64; any other dtype (float16, bfloat16, integers) computes in float32."""
    return tf.float64 if dtype == tf.float64 else tf.float32


def _clamp(position, low, high):
    """`position` (float) clipped to the integers `[low, high]` (`high` an int32 tensor)."""
    return tf.clip_by_value(position, tf.cast(low, position.dtype), tf.cast(high, position.dtype))


def _inside(index, size):
    return tf.logical_and(index >= 0, index < size)


def _and(a, b, fill_value):
    if fill_value is None:
        return None
    return b if a is None else tf.logical_and(a, b)
