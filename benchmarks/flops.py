"""Analytic convolution FLOPs of a Keras model (forward pass).

A 3^ndim convolution with `Cin` input and `Cout` output channels does `k^ndim * Cin` multiply-adds
per output value, so

    flops(conv) = 2 * prod(kernel_size) * Cin * Cout * prod(output spatial shape) * batch

(a multiply-add counts as two FLOPs). Bias additions, activations, pooling, upsampling,
concatenation, warping and the losses are left out: for the VoxelMorph U-Net they are well under
1% of the convolution work. A training step costs about three forward passes (forward, gradient
with respect to the activations, gradient with respect to the weights), see `TRAIN_FACTOR`.
"""

import math

import keras

__all__ = ["TRAIN_FACTOR", "conv_flops", "conv_layers"]

TRAIN_FACTOR = 3


def conv_layers(model):
    """Every `ConvND` layer of `model`, nested models included, in graph order."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D):
            found.append(layer)
    return found


def conv_flops(model, batch=1):
    """Forward-pass convolution FLOPs of a built model with static spatial shapes.

    Args:
        model: a built Keras model (for example `vxmtf.networks.VxmDense`); each convolution
            must have been called once, on a tensor of known spatial shape.
        batch: samples per forward pass.

    Returns:
        `(total, per_layer)`: the total FLOPs (int) and a dict `{layer name: flops}`.

    Raises:
        ValueError: a convolution whose output shape is not fully known, or that is grouped.
    """
    per_layer = {}
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
        per_layer[layer.name] = (
            2 * math.prod(kernel_size) * c_in * c_out * math.prod(spatial) * batch
        )
    return sum(per_layer.values()), per_layer
