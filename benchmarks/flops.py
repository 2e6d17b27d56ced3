"""Analytic convolution FLOPs of a Keras model (forward pass).

A 3^ndim convolution with `Cin` input and `Cout` output channels does `k^ndim * Cin` multiply-adds
per output value, so

    flops(conv) = 2 * prod(kernel_size) * Cin * Cout * prod(output spatial shape) * batch

(a multiply-add counts as two FLOPs). A U-Net decoder convolution that the network computes in
its transposed form (`vxmtf.networks.unet.upsample_concat_conv`, the default) is counted as it
runs: its `Cup` upsampled input channels as a stride-2 transposed convolution of the coarse
tensor, `4^ndim` taps per coarse voxel (`2^ndim` per fine voxel instead of `3^ndim`), and only
its `Cskip` skip channels as a 3^ndim convolution at the fine resolution:

    flops(merge conv) = 2 * Cout * (4^ndim * Cup * coarse voxels + 3^ndim * Cskip * fine voxels)

`decoder="explicit"` counts every convolution in the explicit form instead (upsampling,
concatenation, convolution, as the VoxelMorph code computes it).

Bias additions, activations, pooling, upsampling, concatenation, warping and the losses are left
out: for the VoxelMorph U-Net they are well under 1% of the convolution work. A training step
costs about three forward passes (forward, gradient with respect to the activations, gradient
with respect to the weights), see `TRAIN_FACTOR`.
"""

import math

import keras

__all__ = ["DECODER_FORMS", "TRAIN_FACTOR", "conv_flops", "conv_layers", "transposed_merges"]

TRAIN_FACTOR = 3
DECODER_FORMS = ("model", "explicit", "transposed")


def conv_layers(model):
    """Every `ConvND` layer of `model`, nested models included, in graph order."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D):
            found.append(layer)
    return found


def transposed_merges(model, decoder="model"):
    """`{conv layer name: upsampled input channels}` of the decoder convolutions that the
    U-Nets inside `model` compute in the transposed form: every merge followed by a
    convolution for which `vxmtf.networks.unet.transposable` holds, when the U-Net's
    `transposed_decoder` is on (`decoder="model"`), always (`"transposed"`) or never
    (`"explicit"`)."""
    from vxmtf.checks import check_choice
    from vxmtf.networks.unet import Unet, transposable

    check_choice("decoder", decoder, DECODER_FORMS)
    found = {}
    if decoder == "explicit":
        return found
    for unet in model._flatten_layers(include_self=True, recursive=True):
        if not isinstance(unet, Unet) or not (decoder == "transposed" or unet.transposed_decoder):
            continue
        followers = [*unet.decoder[1:], *unet.full_resolution[:1]]
        for merge, following in zip(unet.decoder, followers, strict=False):
            if transposable(merge.upsample, following.conv):
                found[following.conv.name] = int(merge.upsample.output.shape[-1])
    return found


def conv_flops(model, batch=1, decoder="model"):
    """Forward-pass convolution FLOPs of a built model with static spatial shapes.

    Args:
        model: a built Keras model (for example `vxmtf.networks.VxmDense`); each convolution
            must have been called once, on a tensor of known spatial shape.
        batch: samples per forward pass.
        decoder: how U-Net decoder merges are counted: as the model computes them ("model"),
            or in the "explicit" or "transposed" form whatever the model's setting.

    Returns:
        `(total, per_layer)`: the total FLOPs (int) and a dict `{layer name: flops}`.

    Raises:
        ValueError: a convolution whose output shape is not fully known, or that is grouped.
    """
    per_layer = {}
    upsampled = transposed_merges(model, decoder)
    for layer in conv_layers(model):
        out_shape = tuple(layer.output.shape)  # (batch, *spatial, Cout)
        spatial = out_shape[1:-1]
        if any(s is None for s in spatial):
            raise ValueError(
                f"Counting FLOPs needs known spatial sizes; build the model with a fixed "
                f"inshape. Received: {layer.name}.output.shape={out_shape}"
            )
        if getattr(layer, "groups", 1) != 1:
            raise ValueError(f"Grouped convolutions are not counted. Received: {layer.name}")
        # kernel: (*kernel_size, Cin, Cout)
        *kernel_size, c_in, c_out = layer.kernel.shape
        fine = math.prod(spatial) * batch
        c_up = upsampled.get(layer.name, 0)  # channels computed by the transposed convolution
        taps_up = 4 ** len(spatial) / 2 ** len(spatial)  # per fine voxel: 2^ndim
        per_layer[layer.name] = int(
            2 * c_out * fine * (math.prod(kernel_size) * (c_in - c_up) + taps_up * c_up)
        )
    return sum(per_layer.values()), per_layer
