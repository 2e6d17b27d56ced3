"""`Unet`: the VoxelMorph convolutional encoder-decoder backbone."""

import dataclasses

import keras
import tensorflow as tf

from vxmtf.checks import check_bool, is_int


@dataclasses.dataclass(frozen=True)
class ConvBlock:
    """A 3^ndim "same" convolution and the LeakyReLU(0.2) after it: `activation(conv(x))`."""

    conv: keras.layers.Layer
    activation: keras.layers.Layer


@dataclasses.dataclass(frozen=True)
class EncoderLevel(ConvBlock):
    """An encoder level: its block's output is the level's skip connection, then `pool` (2x)."""

    pool: keras.layers.Layer


@dataclasses.dataclass(frozen=True)
class DecoderLevel(ConvBlock):
    """A decoder level: its block, then `concat([upsample(x), skip])` (upsampled tensor first)."""

    upsample: keras.layers.Layer
    concat: keras.layers.Layer


@keras.saving.register_keras_serializable(package="vxmtf")
class Unet(keras.Model):
    """U-Net of Balakrishnan et al. (CVPR 2018, TMI 2019), 2D or 3D, as a functional model.

    Encoder: for each entry of `enc_features`, a 3^ndim convolution + LeakyReLU(0.2), kept as a
    skip connection, then 2x max pooling. Decoder: for each encoder level (deepest first), a
    convolution + LeakyReLU, 2x nearest upsampling and concatenation with that level's skip;
    the remaining `dec_features` are convolutions at full resolution. With the defaults
    (16-32-32-32 / 32-32-32-32-32-16-16) this is the network of the VoxelMorph papers.

    Stages (the layers, in the order the network applies them; `vxmtf.networks.tiled` runs
    them separately to stream the full-resolution part):

        encoder[0]          full resolution: block -> skip_0, pool
        coarse_levels(x)    encoder[1:], then decoder[0] ... decoder[-1]'s block, each decoder
                            level but the last merging its skip: 1/2 resolution and below
        decoder[-1]         upsample, concat with skip_0: back to full resolution
        full_resolution     the blocks of the remaining `dec_features`

    Decoder form (`transposed_decoder`): a decoder merge followed by a convolution computes
    `conv(concat([upsample(coarse), skip]))`. By default (`transposed_decoder=True`) the
    network computes it as `upsample_concat_conv`: the convolution's kernel split along its
    input channels, a stride-2 transposed convolution of `coarse` (4^ndim taps per coarse voxel
    instead of 3^ndim for each of its 2^ndim fine voxels: 3.4x fewer multiplications in 3D)
    plus a convolution of `skip`, never building the upsampled tensor or the concatenation.
    Same layers and weights, outputs and gradients equal to the explicit form up to float
    rounding (the kernel taps are summed first). It is used wherever it is exact: every merge
    followed by a 3^ndim "same" convolution (stride and dilation 1, channels last) after a 2x
    nearest upsampling, with a skip twice the coarse size (the sizes Unet allows); otherwise
    (the last merge when there is no full-resolution convolution after it) the explicit
    layers run. `transposed_decoder=False` always runs the explicit layers (the functional
    graph), e.g. to compare against the VoxelMorph form. Training, inference, tiled inference
    (`coarse_levels`) and export all follow the setting.

    Recomputation (`recompute=True`, to train at lower peak memory): called with
    `training=True`, every block (convolution + LeakyReLU, preceded in the decoder by the
    upsampling and concatenation that feed it) runs under `tf.recompute_grad`. The backward pass
    keeps only each block's inputs and computes the block again to get its gradients, instead of
    keeping every convolution's output before and after its activation. Same layers and
    weights; outputs and gradients equal to the plain graph's up to float rounding. Inference
    (`training=False`), evaluation and export never recompute.

    Args:
        inshape: spatial shape (ints, or None for sizes known only at run time); known sizes
            must be divisible by `2 ** len(enc_features)`.
        in_channels: channels of the input (2 for a concatenated moving/fixed pair).
        enc_features: features of each encoder level.
        dec_features: at least `len(enc_features)` decoder features.
        recompute: recompute the blocks' activations in the backward pass when training
            (see above).
        transposed_decoder: compute the decoder merges as transposed convolutions (True, the
            default) or with explicit upsampling and concatenation layers (False); see above.
            Either way the same layers and weights.

    Attributes:
        encoder: one `EncoderLevel` per entry of `enc_features`, finest first (layers
            `enc_conv_k`, `enc_conv_k_activation`, `enc_pool_k`).
        decoder: one `DecoderLevel` per encoder level, deepest first (`dec_conv_k`, its
            activation, `dec_upsample_k`, `dec_concat_k`); level `k` merges the skip of encoder
            level `L - 1 - k`.
        full_resolution: one `ConvBlock` per remaining entry of `dec_features`
            (`final_conv_k` and its activation).

    Call arguments:
        x: `(batch, *inshape, in_channels)`; returns `(batch, *inshape, dec_features[-1])`.
        training: with `recompute`, True selects the recomputing path.

    Raises:
        ValueError: a bad `inshape` or feature list.
        TypeError: `recompute` or `transposed_decoder` not a bool.
    """

    def __init__(
        self,
        inshape,
        in_channels=2,
        enc_features=(16, 32, 32, 32),
        dec_features=(32, 32, 32, 32, 32, 16, 16),
        recompute=False,
        transposed_decoder=True,
        **kwargs,
    ):
        # Inputs checked.
        inshape = check_inshape(inshape, levels=len(enc_features))
        enc_features = _feature_list(enc_features, "enc_features")
        dec_features = _feature_list(dec_features, "dec_features")
        if len(dec_features) < len(enc_features):
            raise ValueError(
                "Expected at least one decoder feature per encoder level "
                f"({len(enc_features)}). Received: enc_features={enc_features}, "
                f"dec_features={dec_features}"
            )
        check_recompute(recompute)
        check_transposed_decoder(transposed_decoder)
        ndim = len(inshape)
        conv = keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D
        pool = keras.layers.MaxPooling3D if ndim == 3 else keras.layers.MaxPooling2D
        upsample = keras.layers.UpSampling3D if ndim == 3 else keras.layers.UpSampling2D
        # TensorFlow has no float16 CPU kernel for 3D max pooling: under a float16 policy pool in
        # float32 (exact for a max; the casts are fused away under XLA on GPUs).
        compute_dtype = keras.mixed_precision.dtype_policy().compute_dtype
        pool_dtype = "float32" if compute_dtype == "float16" else None
        # oneDNN's bfloat16 weight gradient of a 3x3x3 convolution is garbage (relative error
        # of order 1, inf or NaN) when a spatial axis is shorter than the kernel (TensorFlow 2.21
        # on CPU, 2x2x2 grids with 16-64 channels; exact in float32 and with oneDNN off).
        # Convolutions on grids that small run in float32: they are the cheapest, at the bottom
        # of the U. Unknown sizes (inference, export) need no weight gradient.
        known = [s for s in inshape if s is not None]

        def conv_dtype(level):
            tiny = bool(known) and min(known) // 2**level < 3
            return "float32" if compute_dtype == "bfloat16" and tiny else None

        def block(features, name, level):
            layer = conv(
                features,
                3,
                padding="same",
                kernel_initializer="he_normal",
                dtype=conv_dtype(level),
                name=name,
            )
            return layer, keras.layers.LeakyReLU(0.2, name=f"{name}_activation")

        # Layers, by stage (`_unet_graph` wires them). Set as attributes after the functional
        # initialisation below, so that the layers (and weights) keep the graph's order.
        levels = len(enc_features)
        encoder = tuple(
            EncoderLevel(
                *block(features, f"enc_conv_{level}", level),
                pool=pool(2, dtype=pool_dtype, name=f"enc_pool_{level}"),
            )
            for level, features in enumerate(enc_features)
        )
        # dec_conv_k works on the grid pooled `levels - k` times.
        decoder = tuple(
            DecoderLevel(
                *block(dec_features[level], f"dec_conv_{level}", levels - level),
                upsample=upsample(2, name=f"dec_upsample_{level}"),
                concat=keras.layers.Concatenate(name=f"dec_concat_{level}"),
            )
            for level in range(levels)
        )
        full_resolution = tuple(
            ConvBlock(*block(features, f"final_conv_{index}", 0))
            for index, features in enumerate(dec_features[levels:])
        )

        # Functional graph.
        inputs = keras.Input(shape=(*inshape, in_channels), name="unet_input")
        outputs = _unet_graph(encoder, decoder, full_resolution, inputs)
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)

        # Stages (the layers above, already tracked by the functional graph).
        self.encoder = encoder
        self.decoder = decoder
        self.full_resolution = full_resolution

        # Config.
        self.inshape = inshape
        self.in_channels = in_channels
        self.enc_features = enc_features
        self.dec_features = dec_features
        self.recompute = recompute
        self.transposed_decoder = transposed_decoder

    def call(self, inputs, training=None, mask=None):
        recompute = bool(self.recompute and training)
        if not (recompute or self.transposed_decoder):
            return super().call(inputs, training=training, mask=mask)  # the functional graph
        if isinstance(inputs, (list, tuple)):
            (inputs,) = inputs
        return _unet_graph(
            self.encoder,
            self.decoder,
            self.full_resolution,
            inputs,
            recompute=recompute,
            transposed=self.transposed_decoder,
        )

    def coarse_levels(self, x):
        """The U-Net below full resolution: `encoder[1:]`, then the decoder up to the block of
        `decoder[-1]`, with the skip connections of encoder levels `1 ... L - 1`.

        Args:
            x: `(batch, *inshape / 2, enc_features[0])`, the pooled output of `encoder[0]`.

        Returns:
            `(batch, *inshape / 2, dec_features[L - 1])`, the input of `decoder[-1].upsample`.
        """
        return _coarse_graph(self.encoder, self.decoder, x, transposed=self.transposed_decoder)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "inshape": self.inshape,
            "in_channels": self.in_channels,
            "enc_features": self.enc_features,
            "dec_features": self.dec_features,
            "recompute": self.recompute,
            "transposed_decoder": self.transposed_decoder,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _unet_graph(encoder, decoder, full_resolution, x, recompute=False, transposed=False):
    """The U-Net's wiring of its stages applied to `x`.

    The network is a chain of blocks: a convolution + LeakyReLU, preceded in the decoder by the
    2x upsampling of the coarser tensor and its concatenation with the skip connection. The
    functional graph (`recompute=False, transposed=False`, symbolic tensors) calls the layers.
    With `transposed`, a decoder block computes its convolution from the coarse tensor and the
    skip directly (`upsample_concat_conv`, where `transposable` holds), without the upsampled
    tensor and the concatenation: the same function with the same weights. With `recompute`,
    each block runs under `tf.recompute_grad`.
    """
    apply = _recomputed if recompute else _direct
    skip = apply(_block(encoder[0]), x)  # (batch, *spatial, enc_features[0])
    x = _coarse_graph(encoder, decoder, encoder[0].pool(skip), recompute, transposed)
    # Back to full resolution: the last merge, with the first full-resolution block (none when
    # there are no full-resolution convolutions), then the other blocks.
    following = full_resolution[0] if full_resolution else None
    x = apply(_merge_block(decoder[-1], following, transposed), x, skip)
    for block in full_resolution[1:]:
        x = apply(_block(block), x)
    return x


def _coarse_graph(encoder, decoder, x, recompute=False, transposed=False):
    """`Unet.coarse_levels`: encoder levels 1 ... L - 1, then decoder levels 0 ... L - 1, each
    merge but the last one followed by (and, with `recompute`, fused with) the next block."""
    apply = _recomputed if recompute else _direct
    skips = []
    for level in encoder[1:]:
        x = apply(_block(level), x)
        skips.append(x)
        x = level.pool(x)
    x = apply(_block(decoder[0]), x)
    for merge, following in zip(decoder[:-1], decoder[1:], strict=True):
        x = apply(_merge_block(merge, following, transposed), x, skips.pop())
    return x


def _block(block):
    """`x -> activation(conv(x))` for a `ConvBlock`."""
    return lambda x: block.activation(block.conv(x))


def _merge_block(merge, following, transposed):
    """`(coarse, skip) -> following(concat([upsample(coarse), skip]))` for a `DecoderLevel`
    `merge` and the `ConvBlock` after it (None: the merge alone); with `transposed`, computed
    by `upsample_concat_conv` where `transposable` holds, by the layers otherwise."""
    upsample, concat = merge.upsample, merge.concat
    if following is None:
        return lambda coarse, skip: concat([upsample(coarse), skip])
    conv, activation = following.conv, following.activation

    def fn(coarse, skip):
        if transposed and transposable(upsample, conv, coarse.shape, skip.shape):
            return activation(upsample_concat_conv(coarse, skip, conv))
        return activation(conv(concat([upsample(coarse), skip])))

    return fn


def transposable(upsample, conv, coarse_shape=None, skip_shape=None):
    """Whether `upsample_concat_conv` computes `conv(concat([upsample(coarse), skip]))` exactly
    (up to float rounding), from the layers' settings and the static shapes:

    - `upsample`: a Keras `UpSampling2D`/`UpSampling3D` of size 2 on every axis, nearest
      neighbour, channels last;
    - `conv`: a `Conv2D`/`Conv3D` of the same rank with a 3^ndim kernel, stride 1, dilation 1,
      "same" padding, one group, channels last;
    - shapes (when given): `(batch, *spatial, c)` of the same rank; where both sizes of an
      axis are known, the skip's is twice the coarse one. Sizes known only at run time are
      checked by `upsample_concat_conv` itself: the transposed convolution rejects a skip of
      another size than `2 * coarse`, as the concatenation would.
    """
    ndim = len(conv.kernel_size)
    upsampling = {2: keras.layers.UpSampling2D, 3: keras.layers.UpSampling3D}.get(ndim)
    convolution = {2: keras.layers.Conv2D, 3: keras.layers.Conv3D}.get(ndim)
    if upsampling is None or type(upsample) is not upsampling or type(conv) is not convolution:
        return False
    if tuple(upsample.size) != (2,) * ndim or getattr(upsample, "interpolation", "nearest") != (
        "nearest"
    ):
        return False
    if upsample.data_format != "channels_last" or conv.data_format != "channels_last":
        return False
    if (
        tuple(conv.kernel_size) != (3,) * ndim
        or tuple(conv.strides) != (1,) * ndim
        or tuple(conv.dilation_rate) != (1,) * ndim
        or conv.padding != "same"
        or conv.groups != 1
    ):
        return False
    if coarse_shape is None or skip_shape is None:
        return True
    coarse_shape, skip_shape = tuple(coarse_shape), tuple(skip_shape)
    if len(coarse_shape) != ndim + 2 or len(skip_shape) != ndim + 2:
        return False
    return all(
        c is None or s is None or s == 2 * c
        for c, s in zip(coarse_shape[1:-1], skip_shape[1:-1], strict=True)
    )


def _direct(fn, *tensors):
    return fn(*tensors)


def _recomputed(fn, *tensors):
    # Positional arguments only: in graph mode TensorFlow's custom gradients take no keywords.
    # The variables the layers read inside `fn` get gradients through `recompute_grad`'s
    # `variables` argument (TensorFlow watches the variables read in the forward pass).
    return tf.recompute_grad(fn)(*tensors)


def upsample_concat_conv(coarse, skip, conv):
    """`conv(concatenate([upsample_2x(coarse), skip]))` without the upsampled tensor.

    `conv` is a U-Net convolution layer (3^ndim kernel, "same" padding, stride 1). Its kernel
    splits along input channels into the part that reads the upsampled tensor and the part that
    reads the skip; the first is applied to `coarse` by `upsample_conv`, the second to `skip` by
    a plain convolution, and the bias is added once. Computed in `conv`'s compute dtype.

    Args:
        coarse: `(batch, *spatial, c)`, half the size of `skip` along every spatial axis.
        skip: `(batch, *2 spatial, c_skip)`.
        conv: a built `keras.layers.Conv2D`/`Conv3D` with `c + c_skip` input channels.

    Returns:
        `(batch, *2 spatial, conv.filters)`, before the activation.

    Raises:
        tf.errors.InvalidArgumentError: `skip` is not twice the size of `coarse` (odd sizes).
    """
    dtype = conv.compute_dtype
    coarse = tf.cast(coarse, dtype)
    skip = tf.cast(skip, dtype)
    kernel = tf.convert_to_tensor(conv.kernel)  # the variable's dtype: taps summed in float32
    channels = coarse.shape[-1]
    # A skip that is not twice `coarse` raises, as the concatenation of the explicit form
    # does (sizes known only at run time: when the graph runs).
    check = tf.debugging.assert_equal(
        tf.shape(skip)[1:-1],
        2 * tf.shape(coarse)[1:-1],
        message="Expected a skip connection twice the size of the coarse tensor along every "
        "spatial axis (odd sizes cannot be upsampled back)",
    )
    with tf.control_dependencies([] if check is None else [check]):
        coarse = tf.identity(coarse)
    # kernel: (*3^ndim, c + c_skip, filters) -> the two parts, along input channels.
    out = upsample_conv(coarse, kernel[..., :channels, :])
    # An explicit data_format: without one, TensorFlow 2.21's eager gradient of a 3D
    # convolution fails (its recorded op has no data_format attribute).
    data_format = "NDHWC" if skip.shape.rank == 5 else "NHWC"
    out += tf.nn.convolution(
        skip, tf.cast(kernel[..., channels:, :], dtype), padding="SAME", data_format=data_format
    )
    if conv.use_bias:
        out = tf.nn.bias_add(out, tf.cast(conv.bias, dtype))
    return out


def upsample_conv(x, kernel):
    """A "same" 3^ndim convolution of the 2x nearest-neighbour upsampling of `x`, in one op.

    Along one axis, output voxel `2i + p` of the convolution reads the upsampled voxels
    `2i + p - 1, 2i + p, 2i + p + 1`, that is `x[i - 1], x[i], x[i]` for `p = 0` and
    `x[i], x[i], x[i + 1]` for `p = 1`: two taps of `x` with summed kernel taps. With the
    4-tap kernel `K = (k[2], k[1] + k[2], k[0] + k[1], k[0])` (`k` the 3-tap kernel) a
    stride-2 transposed convolution ("same" padding: one voxel on each side) computes exactly
    these sums, axis by axis, and zero padding of the upsampled tensor is zero padding of `x`.
    It neither builds the upsampled tensor nor spends the convolution's work on its repeated
    values: 4^ndim taps per coarse voxel instead of 3^ndim for each of its 2^ndim fine voxels
    (64 against 216 in 3D, 3.4x fewer multiplications). Equal to upsampling then convolving up
    to float rounding (the kernel taps are summed first, in the kernel's dtype, then cast to
    the dtype of `x`).

    Args:
        x: `(batch, *spatial, in_channels)`, 2 or 3 spatial axes.
        kernel: `(*(3,) * ndim, in_channels, out_channels)`.

    Returns:
        `(batch, *(2 * spatial), out_channels)`.

    Raises:
        ValueError: `x` without 2 or 3 spatial axes, or a kernel that is not 3^ndim.
    """
    ndim = x.shape.rank - 2
    if ndim not in (2, 3) or tuple(kernel.shape[:-2]) != (3,) * ndim:
        raise ValueError(
            "Expected `x` of shape (batch, *spatial, channels) with 2 or 3 spatial axes and a "
            f"3^ndim `kernel`. Received: x.shape={x.shape}, kernel.shape={kernel.shape}"
        )
    # (4, 3): row t is tap t of the 4-tap kernel as a sum of taps of the 3-tap kernel.
    fold = tf.constant([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=kernel.dtype)
    # kernel (*(3,) * ndim, in, out) -> (*(4,) * ndim, out, in), the layout of the filter of a
    # transposed convolution, folded along every spatial axis.
    spec = {2: "ai,bj,ijmn->abnm", 3: "ai,bj,ck,ijkmn->abcnm"}[ndim]
    kernel4 = tf.cast(tf.einsum(spec, *([fold] * ndim), kernel), x.dtype)
    shape = tf.shape(x)
    output_shape = tf.concat([shape[:1], 2 * shape[1:-1], tf.shape(kernel)[-1:]], axis=0)
    data_format = "NDHWC" if ndim == 3 else "NHWC"
    return tf.nn.conv_transpose(
        x, kernel4, output_shape, strides=2, padding="SAME", data_format=data_format
    )


def check_recompute(recompute):
    """Raises `TypeError` unless `recompute` is a bool."""
    check_bool("recompute", recompute, hint="recompute activations in the backward pass")


def check_transposed_decoder(transposed_decoder):
    """Raises `TypeError` unless `transposed_decoder` is a bool."""
    check_bool(
        "transposed_decoder",
        transposed_decoder,
        hint="compute the decoder merges as transposed convolutions",
    )


def check_inshape(inshape, levels):
    """Validate a spatial shape for a network with `levels` 2x poolings; returns a tuple.

    Raises:
        ValueError: not 2 or 3 sizes, a non-positive size, or a known size not divisible by
            `2 ** levels`.
    """
    try:
        inshape = tuple(None if s is None else int(s) for s in inshape)
    except TypeError:
        raise ValueError(
            f"`inshape` must be a sequence of 2 or 3 sizes. Received: inshape={inshape!r}"
        ) from None
    if len(inshape) not in (2, 3):
        raise ValueError(
            "`inshape` must give 2 (2D) or 3 (3D) spatial sizes, without batch or channel axes. "
            f"Received: inshape={inshape}"
        )
    multiple = 2**levels
    for size in inshape:
        if size is not None and (size <= 0 or size % multiple):
            raise ValueError(
                f"Every size in `inshape` must be a positive multiple of 2 ** {levels} = "
                f"{multiple} (one 2x pooling per encoder level); pad or crop the volumes (see "
                f"vxmtf.data). Received: inshape={inshape}"
            )
    return inshape


def _feature_list(features, name):
    features = list(features)
    if not features or any(not is_int(f) or f <= 0 for f in features):
        raise ValueError(
            f"`{name}` must be a non-empty list of positive ints. Received: {name}={features}"
        )
    return [int(f) for f in features]
