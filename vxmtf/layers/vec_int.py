"""`VecInt`: integrate a stationary velocity field into a diffeomorphic displacement."""

import keras

from vxmtf.checks import check_int
from vxmtf.layers.spatial_transformer import check_warp_shapes
from vxmtf.ops.integrate import integrate_velocity


@keras.saving.register_keras_serializable(package="vxmtf")
class VecInt(keras.layers.Layer):
    """Scaling-and-squaring integration of a stationary velocity field (Dalca et al., MICCAI 2018).

    `u = v / 2**steps`, then `steps` times `u <- u + u o (id + u)`; see
    `vxmtf.ops.integrate_velocity`. Computed in float32 under any dtype policy.

    Args:
        steps: number of squarings (>= 0); 0 returns the field unchanged.

    Call arguments:
        velocity: `(batch, *spatial, ndim)` in voxels. Returns the displacement, same shape,
            float32.
    """

    def __init__(self, steps=7, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.steps = check_int("steps", steps, minimum=0)

    def build(self, velocity_shape):
        check_warp_shapes(velocity_shape, velocity_shape)
        self.built = True

    def call(self, velocity):
        return integrate_velocity(velocity, self.steps)

    def compute_output_shape(self, velocity_shape):
        return tuple(velocity_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"steps": self.steps})
        return config
