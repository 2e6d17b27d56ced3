"""Slab-wise ("tiled") inference of `VxmDense`: the same displacement in a fraction of the memory.

At 160x192x224 one float32 channel at full resolution is 27.5 MB, and the last decoder level of
the default U-Net holds 16 (skip) + 32 (upsampled) + 48 (concatenation) + 32 (next convolution)
channels there at once, 3.5 GB. `tiled_displacement` computes the same displacement but never
holds more than a slab of rows (along the first spatial axis) of the full-resolution tensors:

    A. encoder level 0 (`unet.encoder[0]`), over chunks of rows:  pair -> conv -> LeakyReLU
       -> pool (each chunk reads one more input row on each side, and pools whole pairs of rows)
    B. the coarser levels, whole (`unet.coarse_levels`): encoder level 1 to the last decoder
       block, at 1/2 resolution and below
    C. the full-resolution decoder, streamed over slabs of rows: [`unet.decoder[-1].upsample`
       (B's output), encoder level 0's block (pair) again] -> `unet.decoder[-1].concat` ->
       `unet.full_resolution` -> `model.flow_head`. With the U-Net's transposed decoder (the
       default, `Unet(transposed_decoder=True)`), the concatenation and the convolution after
       it are one block computed as the U-Net does (`_merged_rows`): a stride-2 transposed
       convolution of the coarse rows plus a convolution of the skip rows, never building the
       upsampled rows or the concatenation.
    D. the field, whole (ndim channels): `model.flow_to_displacement` (int_steps == 0: the flow
       itself; else velocity_resize, integrate, displacement_resize), the model's own layers.

Streaming (C): each of the `K` 3^ndim convolutions after the concatenation (the final
convolutions and the flow head) keeps the last 2 rows of its input and puts them in front of the
next slab, and convolves "valid" along the first axis ("same" along the others), so it never
computes a row twice. The zero padding of the untiled "same" convolution is reproduced exactly:
one zero row is carried in front of the first slab, and one zero row is appended to the last.
Each convolution therefore lags its input by one row until the last slab: slab 0 of `n` input
rows gives `n - K` flow rows, the middle slabs `n`, and the last one the remaining rows. The
first slab must give at least one row, so `slab >= K + 1` (`min_slab`; 5 for the default
network). With the transposed decoder the first of the `K` convolutions reads its neighbour
rows directly (the coarse tensor is whole, and the skip rows are computed with one more row on
each side), so it does not lag and only `K - 1` convolutions carry rows; `min_slab` stays
`K + 1`, the same for both forms. The result equals the untiled model up to float32 summation
order.

Peak memory of stage C is about `slab * batch * prod(spatial[1:]) * 4 bytes * slab_width(model)`
(128 channels for the default network, 22 MB per row at 160x192x224; an upper bound for the
transposed decoder, which holds no concatenation); stage B runs the network
at half resolution and below, whole, and stage A holds `slab + 2` rows of `enc_features[0]`
channels.
"""

from __future__ import annotations

import math

import tensorflow as tf

from vxmtf.checks import check_int, check_positive
from vxmtf.networks.unet import transposable, upsample_conv
from vxmtf.networks.vxm_dense import VxmDense

#: Bytes of full-resolution working tensors per slab when no slab size is given.
DEFAULT_MEMORY_BUDGET = 384 * 2**20
#: The first axis is cut into at least this many slabs when no slab size is given.
MIN_SLABS = 4

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MIN_SLABS",
    "check_slab",
    "default_slab",
    "min_slab",
    "slab_width",
    "tiled_displacement",
    "tiled_flow",
]


# Plain TensorFlow ops and no Python branching on tensors: AutoGraph has nothing to convert
# (and converting would only slow down tracing).
@tf.autograph.experimental.do_not_convert
def tiled_displacement(model, moving, fixed, slab=None, memory_budget=DEFAULT_MEMORY_BUDGET):
    """The displacement `model([moving, fixed])["displacement"]`, computed slab by slab.

    Args:
        model: a `vxmtf.networks.VxmDense` (any `inshape`: the weights do not depend on it;
            `bidir` is ignored, only the forward displacement is computed).
        moving, fixed: `(batch, *spatial, 1)`, every spatial size a multiple of
            `model.size_multiple`.
        slab: rows of the first spatial axis per slab, at least `min_slab(model)` (an int or a
            scalar int tensor, checked when the graph runs), or None for
            `default_slab(shape, model, memory_budget)`. Encoder level 0 (stage A of the module
            docstring) pools whole pairs of rows, so it works on `2 * ceil(slab / 2)` rows at a
            time.
        memory_budget: bytes of full-resolution working tensors per slab, used when `slab` is
            None.

    Returns:
        `(batch, *spatial, ndim)` float32 displacement in voxels, as the untiled model's.

    Raises:
        TypeError: `model` is not a `VxmDense`.
        ValueError: `slab` not an int >= `min_slab(model)`, a bad `memory_budget`, inputs of
            the wrong rank or channels, a known spatial size that is not a multiple of
            `model.size_multiple`, or a model whose convolutions are not the 3^ndim "same"
            convolutions `VxmDense` builds.
    """
    flow = tiled_flow(model, moving, fixed, slab, memory_budget)
    # Stage D: the model's layers after the flow head.
    return tf.cast(model.flow_to_displacement(flow), tf.float32)


@tf.autograph.experimental.do_not_convert
def tiled_flow(model, moving, fixed, slab=None, memory_budget=DEFAULT_MEMORY_BUDGET):
    """The flow head's output of `model` (stages A to C of the module docstring), computed
    slab by slab: `(batch, *spatial, ndim)` float32, before the velocity is resized and
    integrated (`model.flow_to_displacement`). Arguments and errors as `tiled_displacement`."""
    net = _Stages(model)
    moving = tf.convert_to_tensor(moving)
    fixed = tf.convert_to_tensor(fixed)
    _check_inputs(moving, fixed, net.ndim, model.size_multiple)
    minimum = min_slab(model)
    if slab is None:
        slab = default_slab(tf.shape(fixed), model, memory_budget)
    elif tf.is_tensor(slab):
        if slab.shape.rank != 0 or not slab.dtype.is_integer:
            raise ValueError(
                f"`slab` must be an int or a scalar int tensor. Received: slab={slab!r}"
            )
        slab = tf.cast(slab, tf.int32)
        tf.debugging.assert_greater_equal(
            slab,
            minimum,
            message=f"`slab` must be at least min_slab(model) = {minimum} rows",
        )
    else:
        check_slab(slab, model)
    slab = tf.cast(slab, tf.int32)

    pair = model.concat([moving, fixed])  # (batch, D, *rest, 2)
    size = tf.shape(pair)[1]  # D
    # One zero row before and after: the "same" padding of encoder level 0's convolution
    # along the first axis.
    padded = tf.pad(pair, [[0, 0], [1, 1]] + [[0, 0]] * net.ndim)  # (batch, D + 2, *rest, 2)
    pooled = _encode_level0(net, padded, size, slab)  # (batch, D / 2, *rest / 2, enc_0)
    coarse = net.unet.coarse_levels(pooled)  # (batch, D / 2, *rest / 2, dec_{L-1})
    flow = _decode_full_resolution(net, padded, coarse, size, slab)  # (batch, D, *rest, ndim)
    return tf.cast(flow, tf.float32)


def min_slab(model):
    """The smallest slab: `K + 1` rows, `K` = the convolutions after the full-resolution
    concatenation (`len(dec_features) - len(enc_features)` + the flow head)."""
    return len(model.dec_features) - len(model.enc_features) + 2


def check_slab(slab, model):
    """Raises ValueError unless `slab` is an int >= `min_slab(model)`; returns it."""
    minimum = min_slab(model)
    return check_int(
        "slab",
        slab,
        minimum,
        hint=f"at least {minimum} rows of the first spatial axis: min_slab(model), its "
        f"{minimum - 1} full-resolution convolutions after the skip concatenation each lagging "
        "a row",
    )


def default_slab(shape, model, memory_budget=DEFAULT_MEMORY_BUDGET):
    """Rows per slab: one slab's working tensors take at most about `memory_budget` bytes, and
    the first axis is cut into at least `MIN_SLABS` slabs.

    `rows = min(memory_budget // (batch * prod(spatial[1:]) * 4 * slab_width(model)),
    ceil(D / MIN_SLABS))`, rounded down to an even number (slabs that start on even rows take
    whole rows of the upsampled coarse tensor, without a copy), and at least `min_slab(model)`.
    The second bound matters for volumes that fit the budget in a few slabs: a slab of most of
    the volume costs more than the untiled network (at 80x96x112, the process peaked at 1.52 GB
    with slabs of 72 rows, 1.03 GB with 20, 1.40 GB untiled) and smaller ones cost little time.

    Args:
        shape: the input shape `(batch, *spatial, channels)`: ints or an int tensor.
        model: the `VxmDense`.
        memory_budget: bytes, > 0.

    Returns:
        An int when `shape` is made of ints, else an int32 scalar tensor.
    """
    _check_budget(memory_budget)
    width = slab_width(model)
    if isinstance(shape, (tuple, list)) and all(isinstance(s, int) for s in shape):
        row_bytes = math.prod(shape[:1] + tuple(shape[2:-1])) * 4 * width
        rows = min(int(memory_budget // row_bytes), -(-shape[1] // MIN_SLABS))
        return max(min_slab(model), rows - rows % 2)
    shape = tf.cast(shape, tf.int64)
    row_bytes = shape[0] * tf.reduce_prod(shape[2:-1]) * 4 * width
    rows = tf.minimum(int(memory_budget) // row_bytes, -(-shape[1] // MIN_SLABS))
    rows = tf.maximum(tf.constant(min_slab(model), tf.int64), rows - rows % 2)
    return tf.cast(rows, tf.int32)


def slab_width(model):
    """Channels of full-resolution tensors alive at once in one slab (the larger of the two):

    - the concatenation: upsampled `dec_features[L-1]` + skip `enc_features[0]` channels, held
      with its two inputs: `2 * (dec_features[L-1] + enc_features[0])`;
    - a decoder convolution: its input, the copy of it with the carried rows in front
      (`2 * c_in`), and its output (`c_out`).
    """
    levels = len(model.enc_features)
    concat = model.dec_features[levels - 1] + model.enc_features[0]
    channels = [concat, *model.dec_features[levels:], len(model.inshape)]
    widths = [2 * concat]
    widths += [2 * c_in + c_out for c_in, c_out in zip(channels[:-1], channels[1:], strict=True)]
    return max(widths)


class _Stages:
    """The stages of a `VxmDense` that tiled inference calls, checked once."""

    def __init__(self, model):
        if not isinstance(model, VxmDense):
            raise TypeError(
                "Expected a vxmtf.networks.VxmDense model. "
                f"Received: model of type {type(model).__name__}"
            )
        self.unet = model.unet
        self.ndim = len(model.inshape)
        # Stage A: encoder level 0 (convolution, activation, pooling).
        self.level0 = self.unet.encoder[0]
        # Stage C: the last merge to full resolution, then the convolutions after it, in order,
        # with their activations (None for the flow head).
        self.merge = self.unet.decoder[-1]
        self.chain = [(block.conv, block.activation) for block in self.unet.full_resolution]
        self.chain.append((model.flow_head, None))
        for conv in [self.level0.conv] + [conv for conv, _ in self.chain]:
            _check_conv(conv, self.ndim)
        # Stage C computes its first convolution in the U-Net's transposed decoder form where
        # the U-Net does and the form is exact (`vxmtf.networks.unet.transposable`).
        self.transposed = self.unet.transposed_decoder and transposable(
            self.merge.upsample, self.chain[0][0]
        )


def _encode_level0(net, padded, size, slab):
    """Stage A: `pool(activation(conv(pair)))` of encoder level 0 over chunks of row pairs.

    Args:
        padded: `(batch, D + 2, *rest, 2)`, the pair with a zero row before and after.
        size: D.

    Returns:
        `(batch, D / 2, *rest / 2, enc_features[0])`.
    """
    conv, activation, pool = net.level0.conv, net.level0.activation, net.level0.pool
    half = size // 2
    chunk = (slab + 1) // 2  # pooled rows per chunk
    steps = (half + chunk - 1) // chunk

    def body(t, out):
        first = t * chunk
        rows = tf.minimum(chunk, half - first)
        # Input rows [2 first - 1, 2 (first + rows) + 1) are padded rows [2 first, ... + 2).
        x = padded[:, 2 * first : 2 * (first + rows) + 2]  # (batch, 2 rows + 2, *rest, 2)
        x = activation(_conv_rows(x, conv))  # (batch, 2 rows, *rest, enc_0)
        return t + 1, out.write(t, _swap_batch_and_rows(pool(x)))  # (batch, rows, *rest/2, enc_0)

    rest = [None if n is None else n // 2 for n in padded.shape[2:-1]]
    element = [None, padded.shape[0], *rest, conv.filters]  # (rows, batch, *rest / 2, enc_0)
    out = tf.TensorArray(pool.compute_dtype, size=steps, element_shape=element, infer_shape=False)
    _, out = tf.while_loop(
        lambda t, _: t < steps, body, (tf.constant(0), out), parallel_iterations=1
    )
    return _concat_rows(out, padded.shape.rank)


def _decode_full_resolution(net, padded, coarse, size, slab):
    """Stage C: the full-resolution decoder streamed over slabs (see the module docstring).

    Args:
        padded: `(batch, D + 2, *rest, 2)`, the pair with a zero row before and after.
        coarse: `(batch, D / 2, *rest / 2, dec_features[L - 1])`.
        size: D.
        slab: rows per slab, >= K + 1.

    Returns:
        `(batch, D, *rest, ndim)` float32, the flow head's output.
    """
    conv0, activation0 = net.level0.conv, net.level0.activation
    upsample, concat = net.merge.upsample, net.merge.concat
    steps = (size + slab - 1) // slab
    # The convolutions that carry rows: all of the chain, or all but the first when it is
    # computed from `coarse` and the skip by `_merged_rows`.
    lagging = net.chain[1:] if net.transposed else net.chain
    # Rows carried in front of each convolution's input: (batch, 1 or 2, *rest, c_in). At first
    # one zero row, the "same" padding before row 0.
    shape = tf.shape(padded)
    carries = []
    for conv, _ in lagging:
        carry_shape = tf.concat([shape[:1], [1], shape[2:-1], [conv.kernel.shape[-2]]], 0)
        carries.append(tf.zeros(carry_shape, conv.compute_dtype))

    def body(t, carries, out):
        first = t * slab
        rows = tf.minimum(slab, size - first)
        end = tf.cast(t == steps - 1, tf.int32)  # 1: append the zero row after row D - 1
        if net.transposed:
            x = _merged_rows(net, padded, coarse, size, first, rows)  # (batch, rows, *rest, c)
        else:
            # Skip rows [first, first + rows) of encoder level 0 read input rows
            # [first - 1, ... + 1).
            skip = activation0(_conv_rows(padded[:, first : first + rows + 2], conv0))
            # Upsampled rows [first, first + rows) repeat coarse rows first // 2 ...
            # (first + rows - 1) // 2.
            index = tf.range(first // 2, (first + rows - 1) // 2 + 1)
            up = upsample(tf.gather(coarse, index, axis=1))  # (batch, 2 len(index), *rest, c)
            up = up[:, first % 2 : first % 2 + rows]  # (batch, rows, *rest, c)
            x = concat([up, skip])  # (batch, rows, *rest, c + enc_0)
        carried = []
        for j, (conv, activation) in enumerate(lagging):
            x = tf.cast(x, carries[j].dtype)
            shape = tf.shape(x)
            zero = tf.zeros(tf.tensor_scatter_nd_update(shape, [[1]], [end]), x.dtype)
            x = tf.concat([carries[j], x, zero], axis=1)  # carry + rows + end
            carried.append(x[:, -2:])  # (the zero row is never carried: the loop ends)
            x = _conv_rows(x, conv)  # rows + end - (2 - carry) rows
            if activation is not None:
                x = activation(x)
        return t + 1, carried, out.write(t, _swap_batch_and_rows(tf.cast(x, tf.float32)))

    element = [None, padded.shape[0], *padded.shape[2:-1], net.ndim]  # (rows, batch, *rest, ndim)
    out = tf.TensorArray(tf.float32, size=steps, element_shape=element, infer_shape=False)
    invariants = [tf.TensorShape([None] * c.shape.rank) for c in carries]
    _, _, out = tf.while_loop(
        lambda t, *_: t < steps,
        body,
        (tf.constant(0), carries, out),
        shape_invariants=(tf.TensorShape([]), invariants, tf.TensorShape(None)),
        parallel_iterations=1,
    )
    return _concat_rows(out, padded.shape.rank)


def _merged_rows(net, padded, coarse, size, first, rows):
    """Rows `[first, first + rows)` of the chain's first block, `activation(conv(concat(
    [upsample(coarse), skip])))`, computed as the U-Net's transposed decoder form does
    (`vxmtf.networks.unet.upsample_concat_conv`): no carried rows, no lag.

    The 3^ndim convolution of output rows `[first, first + rows)` reads the skip rows
    `[first - 1, first + rows + 1)` (zero outside `[0, D)`: its "same" padding) and the coarse
    rows `first // 2 - 1 ... (first + rows - 1) // 2 + 1` through the transposed convolution;
    those are gathered (zero outside the volume, the upsampled tensor's zero padding), and the
    transposed convolution's own padding only reaches its first and last output rows, which
    lie outside `[first, first + rows)`.

    Returns:
        `(batch, rows, *rest, conv.filters)` in the convolution's compute dtype.
    """
    conv, activation = net.chain[0]
    conv0, activation0 = net.level0.conv, net.level0.activation
    dtype = conv.compute_dtype
    kernel = tf.convert_to_tensor(conv.kernel)  # (*3^ndim, c + enc_0, filters)
    channels = coarse.shape[-1]
    # Skip rows [lo, hi) within the volume, read from padded rows [lo, hi + 2).
    lo = tf.maximum(first - 1, 0)
    hi = tf.minimum(first + rows + 1, size)
    skip = activation0(_conv_rows(padded[:, lo : hi + 2], conv0))  # (batch, hi - lo, *rest, e)
    # Zero rows for skip rows -1 and D: (batch, rows + 2, *rest, enc_0).
    pad = [[0, 0], [lo - (first - 1), first + rows + 1 - hi]] + [[0, 0]] * (net.ndim)
    skip = tf.pad(tf.cast(skip, dtype), pad)
    y = _conv_rows(skip, conv, kernel=kernel[..., channels:, :], bias=False)  # (batch, rows, ..)
    # Coarse rows [c0, c1], zero outside [0, D / 2): (batch, c1 - c0 + 1, *rest / 2, c).
    c0 = first // 2 - 1
    index = tf.range(c0, (first + rows - 1) // 2 + 2)
    inside = (index >= 0) & (index < size // 2)
    part = tf.gather(coarse, tf.clip_by_value(index, 0, size // 2 - 1), axis=1)
    mask = tf.reshape(tf.cast(inside, part.dtype), [1, -1] + [1] * (net.ndim))
    part = tf.cast(part * mask, dtype)
    up = upsample_conv(part, kernel[..., :channels, :])  # fine rows 2 c0 ... 2 c1 + 1
    start = first - 2 * c0
    y += up[:, start : start + rows]
    y = tf.nn.bias_add(y, tf.cast(conv.bias, dtype))
    return y if activation is None else activation(y)


def _conv_rows(x, conv, kernel=None, bias=True):
    """A 3^ndim "same" Keras convolution, but "valid" along the first spatial axis.

    `x` is `(batch, n + 2, *rest, c_in)`; returns `(batch, n, *rest, c_out)` in the layer's
    compute dtype: `conv(x, kernel) + bias`, with zero padding of 1 on the other spatial axes.
    The padding is a constant, so that Grappler's remapper folds it into the oneDNN
    convolution instead of copying `x`. `kernel` replaces the layer's (e.g. a part of its
    input channels); `bias=False` leaves the bias out.
    """
    dtype = conv.compute_dtype
    x = tf.cast(x, dtype)
    kernel = conv.kernel if kernel is None else kernel
    rest = [[1, 1]] * (x.shape.rank - 3)
    x = tf.pad(x, [[0, 0], [0, 0], *rest, [0, 0]])  # (batch, n + 2, *(rest + 2), c_in)
    y = tf.nn.convolution(x, tf.cast(kernel, dtype), padding="VALID")
    return tf.nn.bias_add(y, tf.cast(conv.bias, dtype)) if bias else y


def _swap_batch_and_rows(x, rank=None):
    """`(batch, rows, ...)` <-> `(rows, batch, ...)` (a reshape, no copy, for batch 1)."""
    return tf.transpose(x, [1, 0, *range(2, rank or x.shape.rank)])


def _concat_rows(array, rank):
    """A `TensorArray` of `(rows_t, batch, ...)` slabs -> `(batch, sum of rows_t, ...)`."""
    return _swap_batch_and_rows(array.concat(), rank)


def _check_conv(conv, ndim):
    if (
        tuple(conv.kernel_size) != (3,) * ndim
        or tuple(conv.strides) != (1,) * ndim
        or tuple(conv.dilation_rate) != (1,) * ndim
        or conv.padding != "same"
        or not conv.use_bias
    ):
        raise ValueError(
            "Tiled inference expects the 3^ndim 'same' convolutions with bias, stride 1 and no "
            f"dilation that VxmDense builds. Received: layer {conv.name} with kernel_size="
            f"{conv.kernel_size}, strides={conv.strides}, dilation_rate={conv.dilation_rate}, "
            f"padding={conv.padding!r}, use_bias={conv.use_bias}"
        )


def _check_budget(memory_budget):
    check_positive("memory_budget", memory_budget, unit="bytes")


def _check_inputs(moving, fixed, ndim, multiple):
    for name, x in (("moving", moving), ("fixed", fixed)):
        if x.shape.rank != ndim + 2 or x.shape[-1] != 1:
            raise ValueError(
                f"Expected `{name}` of shape (batch, *spatial, 1) with {ndim} spatial axes. "
                f"Received: {name}.shape={tuple(x.shape)}"
            )
    if not moving.shape.is_compatible_with(fixed.shape):
        raise ValueError(
            "Expected `moving` and `fixed` of one shape. "
            f"Received: moving.shape={tuple(moving.shape)}, fixed.shape={tuple(fixed.shape)}"
        )
    for size in fixed.shape[1:-1]:
        if size is not None and size % multiple:
            raise ValueError(
                f"Every spatial size must be a multiple of the model's size_multiple "
                f"({multiple}). Received: fixed.shape={tuple(fixed.shape)}"
            )
