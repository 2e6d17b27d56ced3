"""Keras layers: thin wrappers over `vxmtf.ops`."""

from vxmtf.layers.rescale_transform import RescaleTransform
from vxmtf.layers.spatial_transformer import SpatialTransformer
from vxmtf.layers.vec_int import VecInt

__all__ = ["RescaleTransform", "SpatialTransformer", "VecInt"]
