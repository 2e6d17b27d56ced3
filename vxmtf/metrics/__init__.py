"""NumPy evaluation metrics for registration results; imports no TensorFlow.

- `dice`: Dice overlap per label between two label maps (NaN for a label absent from both).
- `jacobian_determinant`: ``det(I + grad u)`` of a displacement field ``u`` in voxels.
- `folding_fraction`: share of voxels with ``det J <= 0``.
- `sdlogj`: standard deviation of ``log(det J)`` (Learn2Reg).
"""

from vxmtf.metrics.dice import dice
from vxmtf.metrics.jacobian import folding_fraction, jacobian_determinant, sdlogj

__all__ = ["dice", "folding_fraction", "jacobian_determinant", "sdlogj"]
