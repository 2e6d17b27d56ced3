"""NumPy evaluation metrics for registration results; imports no TensorFlow.

- `dice`: Dice overlap per label between two label maps (NaN for a label absent from both).
- `jacobian_determinant`: ``det(I + grad u)`` of a displacement field ``u`` in voxels.
- `folding_fraction`: share of voxels with ``det J <= 0``.
- `sdlogj`: standard deviation of ``log(det J)`` (Learn2Reg).
- `hd95`: 95th-percentile symmetric Hausdorff distance per label in mm (NaN for a label absent
  from both maps, inf for a label in only one).
- `surface_distances`: distances in mm from each surface voxel of one mask to the other's surface.
"""

from vxmtf.metrics.dice import dice
from vxmtf.metrics.jacobian import folding_fraction, jacobian_determinant, sdlogj
from vxmtf.metrics.surface import hd95, surface_distances

__all__ = [
    "dice",
    "folding_fraction",
    "hd95",
    "jacobian_determinant",
    "sdlogj",
    "surface_distances",
]
