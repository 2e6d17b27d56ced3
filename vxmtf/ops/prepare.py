"""The preprocessing of `vxmtf.data.preprocess` as batched TensorFlow ops, for serving graphs.

`Registrator.register` prepares a pair with NumPy (normalise, downsample, pad), runs the
network, and brings the displacement back to the input grid (crop, resize). These functions do
the same on batched tensors `(batch, *spatial, channels)` with free sizes, built from standard
TensorFlow ops only (no `py_function`), so that an exported SavedModel can prepare raw volumes
itself (`vxmtf.export`). Each one equals its NumPy counterpart, sample by sample:

    normalize_minmax      <->  normalize_intensity(x, "minmax")
    normalize_percentile  <->  normalize_intensity(x, "percentile", percentiles)
    percentile            <->  np.percentile(x, q)  (linear interpolation)
    downsample_mean       <->  downsample_image(x, factor)
    pad_to_multiple, crop <->  pad_to_multiple(x, multiple) and Padding.undo
    resize_field_to       <->  resize_displacement(field, shape, factor)

Normalisations are per sample (over all axes but the batch axis), with NaNs set to 0 and
infinities to the largest finite float32 first, as `np.nan_to_num` does.
"""

import tensorflow as tf

from vxmtf.ops.resample import WARP_BYTES_PER_VOXEL, WARP_CHUNK_BYTES, warp
from vxmtf.ops.rescale import rescale_field

__all__ = [
    "crop",
    "downsample_mean",
    "normalize",
    "normalize_minmax",
    "normalize_percentile",
    "pad_to_multiple",
    "percentile",
    "resize_field_to",
    "warp_by_rows",
]

_FLOAT32_MAX = 3.4028234663852886e38


def _finite(x):
    """float32 `x` with NaN -> 0 and +-inf -> +-float32 max (`np.nan_to_num(x, nan=0.0)`)."""
    x = tf.cast(x, tf.float32)
    x = tf.where(tf.math.is_nan(x), tf.zeros_like(x), x)
    return tf.clip_by_value(x, -_FLOAT32_MAX, _FLOAT32_MAX)


def _rescale(x, low, high):
    """`clip((x - low) / (high - low), 0, 1)` per sample, zeros where `high <= low`.

    `x` is float32 `(batch, ...)`; `low`, `high` float64 `(batch,)`. As in
    `normalize_intensity`: the offset is `low` rounded to float32 and the scale
    `1 / (high - low)` computed in float64, then rounded to float32.
    """
    shape = tf.concat([tf.shape(low), tf.ones([tf.rank(x) - 1], tf.int32)], 0)  # (batch, 1, ...)
    spread = high - low
    valid = spread > 0
    scale = tf.where(valid, 1.0 / tf.where(valid, spread, tf.ones_like(spread)), 0.0)
    offset = tf.reshape(tf.cast(low, tf.float32), shape)
    out = (x - offset) * tf.reshape(tf.cast(scale, tf.float32), shape)
    out = tf.clip_by_value(out, 0.0, 1.0)
    # A constant sample maps to zeros (its scale is 0, but x - low may be inf - inf).
    return tf.where(tf.reshape(valid, shape), out, tf.zeros_like(out))


def normalize_minmax(x):
    """`(x - min x) / (max x - min x)` per sample, float32; a constant sample gives zeros.

    Args:
        x: `(batch, ...)`, any real dtype.

    Returns:
        `(batch, ...)` float32 in [0, 1].
    """
    x = _finite(x)
    axes = tf.range(1, tf.rank(x))
    low = tf.cast(tf.reduce_min(x, axis=axes), tf.float64)  # (batch,)
    high = tf.cast(tf.reduce_max(x, axis=axes), tf.float64)
    return _rescale(x, low, high)


def percentile(x, q):
    """The `q` percentiles of each sample, as `np.percentile(sample, q)` computes them.

    Linear interpolation between order statistics (NumPy's default, Hyndman and Fan's method 7):
    with `n` values sorted ascending `a`, `v = q / 100 * (n - 1)`, `i = floor(v)` and
    `t = v - i`, the percentile is `a[i] + (a[i + 1] - a[i]) t` (`a[i + 1] - (a[i + 1] - a[i])
    (1 - t)` when `t >= 0.5`), the difference in the input's float32 and the rest in float64,
    as NumPy does. Only the needed order statistics are found, with `tf.math.top_k` on the
    nearer end of the sorted order (a full sort of 7 million voxels takes seconds).

    Args:
        x: `(batch, ...)`, any real dtype (computed in float32, NaNs not allowed).
        q: a sequence of Python numbers in [0, 100].

    Returns:
        `(batch, len(q))` float64.
    """
    q = [float(p) for p in q]
    if any(not 0.0 <= p <= 100.0 for p in q):
        raise ValueError(f"Expected percentiles in [0, 100]. Received: q={q}")
    x = tf.cast(x, tf.float32)
    flat = tf.reshape(x, [tf.shape(x)[0], -1])  # (batch, n)
    n = tf.shape(flat, out_type=tf.int64)[1]
    values = [_percentile_1(flat, n, p) for p in q]
    return tf.stack(values, axis=1)


def _percentile_1(flat, n, p):
    """One percentile of each row of `flat` `(batch, n)` -> `(batch,)` float64."""
    virtual = tf.cast(n - 1, tf.float64) * (p / 100.0)
    lower = tf.cast(tf.floor(virtual), tf.int64)
    upper = tf.minimum(lower + 1, n - 1)
    t = virtual - tf.cast(lower, tf.float64)

    def smallest():
        # The lower + 2 (at most n) smallest values, ascending: a[0], ..., a[upper].
        k = tf.cast(tf.minimum(upper + 1, n), tf.int32)
        ascending = -tf.math.top_k(-flat, k, sorted=True).values
        return ascending[:, lower], ascending[:, upper]

    def largest():
        # The n - lower largest values, descending: a[n - 1], ..., a[lower].
        k = tf.cast(n - lower, tf.int32)
        descending = tf.math.top_k(flat, k, sorted=True).values
        return descending[:, n - 1 - lower], descending[:, n - 1 - upper]

    a, b = tf.cond(lower < n - lower, smallest, largest)  # (batch,) float32 each
    difference = tf.cast(b - a, tf.float64)
    a, b = tf.cast(a, tf.float64), tf.cast(b, tf.float64)
    return tf.where(t >= 0.5, b - difference * (1.0 - t), a + difference * t)


def normalize_percentile(x, percentiles=(1.0, 99.0)):
    """`clip((x - lo) / (hi - lo), 0, 1)` per sample with `lo, hi` its `percentiles`.

    Args:
        x: `(batch, ...)`, any real dtype.
        percentiles: `(low, high)`, `0 <= low < high <= 100`.

    Returns:
        `(batch, ...)` float32 in [0, 1] (zeros for a sample whose percentiles coincide).
    """
    low, high = (float(p) for p in percentiles)
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(
            "Expected percentiles (low, high) with 0 <= low < high <= 100. "
            f"Received: percentiles={tuple(percentiles)}"
        )
    x = _finite(x)
    bounds = percentile(x, (low, high))  # (batch, 2) float64
    return _rescale(x, bounds[:, 0], bounds[:, 1])


def normalize(x, method="minmax", percentiles=(1.0, 99.0)):
    """`normalize_minmax`, `normalize_percentile` or (None) only the float32 cast with NaNs
    set to 0, as `vxmtf.data.preprocess.normalize_intensity(x, method, percentiles)`."""
    if method == "minmax":
        return normalize_minmax(x)
    if method == "percentile":
        return normalize_percentile(x, percentiles)
    if method is None:
        return _finite(x)
    raise ValueError(
        f"Expected method in ('minmax', 'percentile', None). Received: method={method!r}"
    )


def downsample_mean(x, factor):
    """Block mean over `factor ** ndim` voxels, keeping `floor(n / factor)` voxels per axis.

    `out[b, i, ..., c] = mean(x[b, factor i : factor (i + 1), ..., c])`, a trailing incomplete
    block dropped: an average pooling of stride `factor` over the covered region, summed in
    float64 and rounded to float32 as `downsample_image` does.

    Args:
        x: `(batch, *spatial, channels)`, 1 to 3 spatial axes (static rank).
        factor: Python int >= 1.

    Returns:
        `(batch, *(spatial // factor), channels)` float32.
    """
    factor = _check_factor(factor)
    x = tf.cast(x, tf.float32)
    if factor == 1:
        return x
    ndim = x.shape.rank - 2
    shape = tf.shape(x)
    coarse = shape[1:-1] // factor  # (ndim,)
    covered = tf.slice(
        x, tf.zeros([ndim + 2], tf.int32), tf.concat([[-1], coarse * factor, [-1]], 0)
    )
    # (batch, C0, K, C1, K, ..., channels): each axis split into (block, offset in block).
    split = tf.stack([coarse, tf.fill([ndim], factor)], axis=1)  # (ndim, 2)
    blocks = tf.reshape(
        tf.cast(covered, tf.float64), tf.concat([shape[:1], tf.reshape(split, [-1]), shape[-1:]], 0)
    )
    mean = tf.reduce_mean(blocks, axis=[2 + 2 * d for d in range(ndim)])  # (batch, *C, channels)
    return tf.cast(mean, tf.float32)


def pad_to_multiple(x, multiple):
    """Centred zero padding of the spatial axes up to multiples of `multiple`.

    Per axis of size `n`, `total = ceil(n / multiple) * multiple - n` voxels are added,
    `total // 2` before and the rest after, as `vxmtf.data.preprocess.pad_to_multiple`.

    Args:
        x: `(batch, *spatial, channels)`.
        multiple: Python int >= 1.

    Returns:
        `(padded, before)`: `padded` `(batch, *padded_spatial, channels)` (static channels
        kept) and `before`, int32 `(ndim,)`, the voxels added before each axis (`crop` takes it
        back).
    """
    multiple = _check_factor(multiple, "multiple")
    x = tf.convert_to_tensor(x)
    sizes = tf.shape(x)[1:-1]  # (ndim,)
    padded = (sizes + multiple - 1) // multiple * multiple
    before = (padded - sizes) // 2
    widths = tf.stack([before, padded - sizes - before], axis=1)  # (ndim, 2)
    paddings = tf.pad(widths, [[1, 1], [0, 0]])  # (ndim + 2, 2): none on batch and channels
    out = tf.pad(x, paddings)
    # A padding computed at run time loses the static sizes, which convolutions need.
    return tf.ensure_shape(out, [x.shape[0], *[None] * (x.shape.rank - 2), x.shape[-1]]), before


def crop(x, begin, sizes):
    """`x[:, begin_0 : begin_0 + sizes_0, ..., :]`: the inverse of `pad_to_multiple`.

    Args:
        x: `(batch, *spatial, channels)`.
        begin, sizes: int `(ndim,)` tensors (or sequences).

    Returns:
        `(batch, *sizes, channels)`, static batch and channel sizes kept.
    """
    x = tf.convert_to_tensor(x)
    begin = tf.pad(tf.cast(begin, tf.int32), [[1, 1]])
    size = tf.concat([[-1], tf.cast(sizes, tf.int32), [-1]], axis=0)
    out = tf.slice(x, begin, size)
    return tf.ensure_shape(out, [x.shape[0], *[None] * (x.shape.rank - 2), x.shape[-1]])


def resize_field_to(field, shape, factor):
    """A displacement on a grid downsampled by `factor`, brought back to the full grid.

    With `C = shape // factor`, `rescale_field` resizes `(batch, *C, ndim)` to
    `factor * C` (voxel centres, N-linear, border clamped; vectors times `factor`), then the
    `shape - factor * C` trailing voxels repeat the last covered voxel (edge padding), as
    `vxmtf.data.preprocess.resize_displacement`.

    Args:
        field: `(batch, *C, ndim)` in coarse voxels.
        shape: the full spatial sizes `S`, an int `(ndim,)` tensor or sequence.
        factor: Python int >= 1.

    Returns:
        `(batch, *S, ndim)` float32 in full-grid voxels.
    """
    factor = _check_factor(factor)
    field = tf.cast(field, tf.float32)
    if factor == 1:
        return field
    ndim = field.shape[-1]
    shape = tf.cast(shape, tf.int32)
    covered = shape // factor * factor
    fine = rescale_field(field, out_shape=covered)  # (batch, *(K C), ndim)
    for k in range(ndim):
        # Edge padding along axis k: the voxels past the covered grid read the last one.
        index = tf.minimum(tf.range(shape[k]), covered[k] - 1)
        fine = tf.gather(fine, index, axis=k + 1)
    return tf.ensure_shape(fine, [field.shape[0], *[None] * ndim, ndim])


def warp_by_rows(image, displacement, interpolation="linear", budget=WARP_CHUNK_BYTES):
    """`vxmtf.ops.warp(image, displacement, interpolation)` by chunks of output rows.

    The rows per chunk are computed in the graph from the shape, as `warp_rows` does with a
    static one: `max(1, budget // (WARP_BYTES_PER_VOXEL * batch * prod(spatial[1:])))`, so the
    interpolation's temporaries take about `budget` bytes whatever the input size. The values
    are the whole warp's (border clamped).

    Args:
        image: `(batch, *spatial, channels)`.
        displacement: `(batch, *spatial, ndim)` float32, in voxels.
        interpolation: "linear" or "nearest".
        budget: bytes of temporaries per chunk, a Python int > 0.

    Returns:
        `(batch, *spatial, channels)`, of the image's dtype.
    """
    displacement = tf.cast(displacement, tf.float32)
    ndim = displacement.shape[-1]
    shape = tf.shape(displacement, out_type=tf.int64)
    voxels = shape[0] * tf.reduce_prod(shape[2 : ndim + 1])  # per output row
    rows = tf.maximum(tf.constant(1, tf.int64), int(budget) // (WARP_BYTES_PER_VOXEL * voxels))
    rows = tf.cast(tf.minimum(rows, shape[1]), tf.int32)
    return warp(image, displacement, interpolation, rows=rows)


def _check_factor(value, name="factor"):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `{name}` to be a Python int >= 1. Received: {name}={value!r}")
    return value
