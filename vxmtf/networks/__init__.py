"""Registration networks composed from `vxmtf.layers`, and their slab-wise inference."""

from vxmtf.networks.tiled import default_slab, min_slab, tiled_displacement
from vxmtf.networks.unet import Unet
from vxmtf.networks.vxm_dense import VxmDense

__all__ = ["Unet", "VxmDense", "default_slab", "min_slab", "tiled_displacement"]
