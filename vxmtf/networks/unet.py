"""`Unet`: the VoxelMorph convolutional encoder-decoder backbone."""

import keras


@keras.saving.register_keras_serializable(package="vxmtf")
class Unet(keras.Model):
    """U-Net of Balakrishnan et al. (CVPR 2018, TMI 2019), 2D or 3D, as a functional model.

    Encoder: for each entry of `enc_features`, a 3^ndim convolution + LeakyReLU(0.2), kept as a
    skip connection, then 2x max pooling. Decoder: for each encoder level (deepest first), a
    convolution + LeakyReLU, 2x nearest upsampling and concatenation with that level's skip;
    the remaining `dec_features` are convolutions at full resolution. With the defaults
    (16-32-32-32 / 32-32-32-32-32-16-16) this is the network of the VoxelMorph papers.

    Args:
        inshape: spatial shape (ints, or None for sizes known only at run time); known sizes
            must be divisible by `2 ** len(enc_features)`.
        in_channels: channels of the input (2 for a concatenated moving/fixed pair).
        enc_features: features of each encoder level.
        dec_features: at least `len(enc_features)` decoder features.

    Call arguments:
        x: `(batch, *inshape, in_channels)`; returns `(batch, *inshape, dec_features[-1])`.
    """

    def __init__(
        self,
        inshape,
        in_channels=2,
        enc_features=(16, 32, 32, 32),
        dec_features=(32, 32, 32, 32, 32, 16, 16),
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

        def conv_block(x, features, name, level):
            x = conv(
                features,
                3,
                padding="same",
                kernel_initializer="he_normal",
                dtype=conv_dtype(level),
                name=name,
            )(x)
            return keras.layers.LeakyReLU(0.2, name=f"{name}_activation")(x)

        # Functional graph.
        inputs = keras.Input(shape=(*inshape, in_channels), name="unet_input")
        x = inputs
        skips = []
        for level, features in enumerate(enc_features):
            x = conv_block(x, features, f"enc_conv_{level}", level)
            skips.append(x)
            x = pool(2, dtype=pool_dtype, name=f"enc_pool_{level}")(x)
        levels = len(enc_features)
        for level in range(levels):
            # dec_conv_k works on the grid pooled `levels - k` times.
            x = conv_block(x, dec_features[level], f"dec_conv_{level}", levels - level)
            x = upsample(2, name=f"dec_upsample_{level}")(x)
            x = keras.layers.Concatenate(name=f"dec_concat_{level}")([x, skips.pop()])
        for index, features in enumerate(dec_features[levels:]):
            x = conv_block(x, features, f"final_conv_{index}", 0)
        super().__init__(inputs=inputs, outputs=x, **kwargs)

        # Config.
        self.inshape = inshape
        self.in_channels = in_channels
        self.enc_features = enc_features
        self.dec_features = dec_features

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "inshape": self.inshape,
            "in_channels": self.in_channels,
            "enc_features": self.enc_features,
            "dec_features": self.dec_features,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


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
    if not features or any(
        isinstance(f, bool) or not isinstance(f, int) or f <= 0 for f in features
    ):
        raise ValueError(
            f"`{name}` must be a non-empty list of positive ints. Received: {name}={features}"
        )
    return features
