"""Pure batched tensor functions: grids, resampling, integration, field resizing, box sums,
and the preprocessing of `vxmtf.data.preprocess` as tensor ops (`vxmtf.ops.prepare`).

These know nothing of Keras or files; `vxmtf.layers` and `vxmtf.losses` are thin wrappers.
"""

from vxmtf.ops.filters import box_sum
from vxmtf.ops.grid import identity_grid
from vxmtf.ops.integrate import integrate_velocity
from vxmtf.ops.prepare import (
    crop,
    downsample_mean,
    normalize_minmax,
    normalize_percentile,
    pad_to_multiple,
    percentile,
    resize_field_to,
    warp_by_rows,
)
from vxmtf.ops.resample import INTERPOLATIONS, resample, warp, warp_rows
from vxmtf.ops.rescale import rescale_field

__all__ = [
    "INTERPOLATIONS",
    "box_sum",
    "crop",
    "downsample_mean",
    "identity_grid",
    "integrate_velocity",
    "normalize_minmax",
    "normalize_percentile",
    "pad_to_multiple",
    "percentile",
    "rescale_field",
    "resample",
    "resize_field_to",
    "warp",
    "warp_by_rows",
    "warp_rows",
]
