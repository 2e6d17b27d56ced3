"""Pure batched tensor functions: grids, resampling, integration, field resizing, box sums.

These know nothing of Keras or files; `vxmtf.layers` and `vxmtf.losses` are thin wrappers.
"""

from vxmtf.ops.filters import box_sum
from vxmtf.ops.grid import identity_grid
from vxmtf.ops.integrate import integrate_velocity
from vxmtf.ops.resample import INTERPOLATIONS, resample, warp, warp_rows
from vxmtf.ops.rescale import rescale_field

__all__ = [
    "INTERPOLATIONS",
    "box_sum",
    "identity_grid",
    "integrate_velocity",
    "rescale_field",
    "resample",
    "warp",
    "warp_rows",
]
