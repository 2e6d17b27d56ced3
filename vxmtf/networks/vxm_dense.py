"""`VxmDense`: the VoxelMorph registration network."""

import dataclasses
import math

import keras

from vxmtf.checks import check_bool, check_int
from vxmtf.layers.rescale_transform import RescaleTransform
from vxmtf.layers.spatial_transformer import SpatialTransformer
from vxmtf.layers.vec_int import VecInt
from vxmtf.networks.unet import Unet, check_inshape, check_recompute, check_transposed_decoder


@dataclasses.dataclass(frozen=True)
class _FieldLayers:
    """The layers from a flow head's output to a displacement; None stands for the identity."""

    velocity_resize: keras.layers.Layer | None
    integrate: keras.layers.Layer | None
    displacement_resize: keras.layers.Layer | None

    def velocity(self, flow):
        return flow if self.velocity_resize is None else self.velocity_resize(flow)

    def displacement(self, velocity):
        if self.integrate is None:
            return velocity
        displacement = self.integrate(velocity)
        if self.displacement_resize is not None:
            displacement = self.displacement_resize(displacement)
        return displacement


@keras.saving.register_keras_serializable(package="vxmtf")
class VxmDense(keras.Model):
    """VoxelMorph: predict a dense deformation from a (moving, fixed) pair and warp `moving`.

    Composition (Balakrishnan et al., CVPR 2018 / TMI 2019; Dalca et al., MICCAI 2018):

        concat(moving, fixed) -> Unet -> flow head (3^ndim conv, ndim channels, ~N(0, 1e-5))
          int_steps == 0: displacement = flow                       (CVPR 2018 model)
          int_steps > 0:  v = flow resized by 1 / int_resolution    (stationary velocity)
                          displacement = resize(VecInt(v), int_resolution)   (diffeomorphic)
          moved = SpatialTransformer(moving, displacement)

    Outputs (a dict):
        moved: `(batch, *inshape, 1)` the moving image warped onto the fixed image.
        displacement: `(batch, *inshape, ndim)` float32, voxels, full resolution;
            `moved[x] = moving[x + displacement[x]]`.
        preint_flow: the field the smoothness loss (`vxmtf.losses.Grad`) regularises: the
            velocity at 1 / int_resolution of the input size when `int_steps > 0`, else the
            full-resolution displacement itself (as in the VoxelMorph code). Grad at a lower
            resolution should use `loss_mult=int_resolution`.
        inverse_moved, inverse_displacement (only with `bidir=True`): the fixed image warped
            onto the moving one by the inverse transform (integration of -v; -flow when
            `int_steps == 0`, a first-order inverse).

    Args:
        inshape: spatial shape; known sizes divisible by `2 ** len(enc_features)`. None sizes
            (e.g. for export) are allowed and checked at run time by the convolutions.
        enc_features, dec_features: U-Net features (see `Unet`).
        int_steps: scaling-and-squaring steps; 0 for the non-diffeomorphic model.
        int_resolution: integer factor by which the velocity is coarser than the image
            (only used when `int_steps > 0`).
        bidir: also output the inverse warp of the fixed image.
        recompute: train at lower peak memory by recomputing the U-Net's activations in the
            backward pass (`Unet`'s `recompute`), at the cost of a second forward pass of the
            U-Net. The weights are the same as without it (a model trained with
            it loads into one without), gradients equal up to float rounding, and inference is
            unchanged.
        transposed_decoder: compute the U-Net's decoder merges as a stride-2 transposed
            convolution of the coarse tensor plus a convolution of the skip (True, the default:
            3.4x fewer multiplications for the upsampled part in 3D), or with explicit
            upsampling, concatenation and convolution layers (False, the form of the VoxelMorph
            code, for comparison). The same layers and weights either way, and the same outputs
            up to float rounding; a `.keras` file saved with one loads with the other (see
            `Unet`).

    Attributes (the stages of the composition above, as the functional graph wires them):
        concat: the `Concatenate` layer `pair`: `(moving, fixed)` -> the U-Net's 2 channels.
        unet: the `Unet` (its own stages: `Unet.encoder`, `Unet.coarse_levels`, ...).
        flow_head: the convolution `flow`.
        transformer: the `SpatialTransformer` that warps `moving`.
        The layers from the flow to the displacement are applied by `flow_to_velocity`,
        `velocity_to_displacement` and `flow_to_displacement`.

    Call arguments:
        inputs: `[moving, fixed]` or `{"moving": ..., "fixed": ...}`, each
            `(batch, *inshape, 1)`.
    """

    def __init__(
        self,
        inshape,
        enc_features=(16, 32, 32, 32),
        dec_features=(32, 32, 32, 32, 32, 16, 16),
        int_steps=7,
        int_resolution=2,
        bidir=False,
        recompute=False,
        transposed_decoder=True,
        **kwargs,
    ):
        # Inputs checked.
        inshape = check_inshape(inshape, levels=len(list(enc_features)))
        int_steps = check_int("int_steps", int_steps, minimum=0)
        int_resolution = check_int("int_resolution", int_resolution, minimum=1)
        for size in inshape:
            if int_steps and size is not None and size % int_resolution:
                raise ValueError(
                    f"Every size in `inshape` must be divisible by `int_resolution` "
                    f"({int_resolution}). Received: inshape={inshape}"
                )
        check_bool("bidir", bidir)
        check_recompute(recompute)
        check_transposed_decoder(transposed_decoder)
        ndim = len(inshape)
        integrate = int_steps > 0
        coarse = integrate and int_resolution > 1

        # Layers.
        concat = keras.layers.Concatenate(name="pair")
        unet = Unet(
            inshape,
            2,
            enc_features,
            dec_features,
            recompute=recompute,
            transposed_decoder=transposed_decoder,
            name="unet",
        )
        conv = keras.layers.Conv3D if ndim == 3 else keras.layers.Conv2D
        # The head and everything after it run in float32 under mixed precision: fields are
        # coordinates and must keep sub-voxel resolution.
        flow_head = conv(
            ndim,
            3,
            padding="same",
            kernel_initializer=keras.initializers.RandomNormal(stddev=1e-5),
            bias_initializer="zeros",
            dtype="float32",
            name="flow",
        )
        # From the flow head's output to the displacement (`flow_to_displacement`). A plain
        # record of layers, set before the functional initialisation so that the graph below
        # is built by the methods themselves; the layers are tracked, in the graph's order, by
        # that initialisation.
        self._field = _FieldLayers(
            velocity_resize=(
                RescaleTransform(1 / int_resolution, name="velocity_resize") if coarse else None
            ),
            integrate=VecInt(int_steps, name="integrate") if integrate else None,
            displacement_resize=(
                RescaleTransform(int_resolution, name="displacement_resize") if coarse else None
            ),
        )
        transformer = SpatialTransformer(name="transformer")

        # Functional graph.
        moving = keras.Input(shape=(*inshape, 1), name="moving")
        fixed = keras.Input(shape=(*inshape, 1), name="fixed")
        flow = flow_head(unet(concat([moving, fixed])))
        velocity = self.flow_to_velocity(flow)
        displacement = self.velocity_to_displacement(velocity)
        outputs = {"preint_flow": velocity}
        outputs["moved"] = transformer(moving, displacement)
        outputs["displacement"] = displacement
        if bidir:
            negative = keras.layers.Rescaling(-1.0, dtype="float32", name="negate")(velocity)
            # int_steps == 0: -flow, a first-order inverse; else the integration of -v.
            inverse = _FieldLayers(
                velocity_resize=None,
                integrate=VecInt(int_steps, name="inverse_integrate") if integrate else None,
                displacement_resize=(
                    RescaleTransform(int_resolution, name="inverse_displacement_resize")
                    if coarse
                    else None
                ),
            ).displacement(negative)
            outputs["inverse_moved"] = SpatialTransformer(name="inverse_transformer")(
                fixed, inverse
            )
            outputs["inverse_displacement"] = inverse
        super().__init__(inputs=[moving, fixed], outputs=outputs, **kwargs)

        # Stages (layers of the graph above).
        self.concat = concat
        self.unet = unet
        self.flow_head = flow_head
        self.transformer = transformer

        # Config.
        self.inshape = inshape
        self.enc_features = list(enc_features)
        self.dec_features = list(dec_features)
        self.int_steps = int_steps
        self.int_resolution = int_resolution
        self.bidir = bidir
        self.recompute = recompute
        self.transposed_decoder = transposed_decoder

    @property
    def size_multiple(self):
        """Every spatial size the model registers must be a multiple of this (see
        `size_multiple`)."""
        return size_multiple(self.enc_features, self.int_steps, self.int_resolution)

    def flow_to_velocity(self, flow):
        """The velocity (`preint_flow`) from the flow head's output: the layer
        `velocity_resize` (1 / int_resolution) when integrating at a coarser resolution, else
        `flow` itself.

        Args:
            flow: `(batch, *spatial, ndim)`, the output of `flow_head`.

        Returns:
            `(batch, *spatial / int_resolution, ndim)` float32 when resized, else `flow`.
        """
        return self._field.velocity(flow)

    def velocity_to_displacement(self, velocity):
        """The displacement from the velocity: the layers `integrate` (`VecInt`) and
        `displacement_resize` (when `int_resolution > 1`); `velocity` itself when
        `int_steps == 0`.

        Args:
            velocity: `(batch, *spatial / int_resolution, ndim)`, see `flow_to_velocity`.

        Returns:
            `(batch, *spatial, ndim)`, float32 when integrated, in voxels.
        """
        return self._field.displacement(velocity)

    def flow_to_displacement(self, flow):
        """`velocity_to_displacement(flow_to_velocity(flow))`: the layers after the flow head
        that give the `displacement` output, as the functional graph applies them."""
        return self.velocity_to_displacement(self.flow_to_velocity(flow))

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "inshape": self.inshape,
            "enc_features": self.enc_features,
            "dec_features": self.dec_features,
            "int_steps": self.int_steps,
            "int_resolution": self.int_resolution,
            "bidir": self.bidir,
            "recompute": self.recompute,
            "transposed_decoder": self.transposed_decoder,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def size_multiple(enc_features, int_steps, int_resolution):
    """`lcm(2 ** len(enc_features), int_resolution)` when integrating, else `2 ** levels`.

    The U-Net halves every axis once per encoder level; the velocity of a diffeomorphic model
    (`int_steps > 0`) lives on a grid `int_resolution` times coarser, so sizes must divide by
    that too. Volumes of other sizes are padded to this multiple (`vxmtf.data.preprocess`).
    """
    multiple = 2 ** len(enc_features)
    if int_steps > 0:
        multiple = math.lcm(multiple, int_resolution)
    return multiple
