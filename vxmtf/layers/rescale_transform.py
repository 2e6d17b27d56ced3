"""`RescaleTransform`: move a displacement field to a finer or coarser grid."""

import keras

from vxmtf.checks import check_positive
from vxmtf.layers.spatial_transformer import check_warp_shapes
from vxmtf.ops.rescale import rescale_field


@keras.saving.register_keras_serializable(package="vxmtf")
class RescaleTransform(keras.layers.Layer):
    """Resize a displacement field by `factor` and scale its vectors by the same factor.

    Used to integrate a velocity field at a lower resolution (factor 1/2 before, 2 after).
    Voxel-centre convention: see `vxmtf.ops.rescale_field`. Computed in float32.

    Args:
        factor: positive number; output spatial size = round(input size * factor).

    Call arguments:
        field: `(batch, *spatial, ndim)` in input voxels; returns
            `(batch, *round(spatial * factor), ndim)` in output voxels, float32.
    """

    def __init__(self, factor, **kwargs):
        super().__init__(autocast=False, **kwargs)
        self.factor = check_positive("factor", factor)

    def build(self, field_shape):
        check_warp_shapes(field_shape, field_shape)
        self.built = True

    def call(self, field):
        return rescale_field(field, factor=self.factor)

    def compute_output_shape(self, field_shape):
        spatial = [None if s is None else int(round(s * self.factor)) for s in field_shape[1:-1]]
        return (field_shape[0], *spatial, field_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({"factor": self.factor})
        return config
