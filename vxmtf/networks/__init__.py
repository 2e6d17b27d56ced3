"""Registration networks composed from `vxmtf.layers`."""

from vxmtf.networks.unet import Unet
from vxmtf.networks.vxm_dense import VxmDense

__all__ = ["Unet", "VxmDense"]
