"""Registration losses as `keras.losses.Loss` subclasses, each over a pure batched function.

- `NCC` (`local_ncc`, `mean_local_ncc`): negative local normalised cross-correlation.
- `MSE` (`mean_squared_error`): mean squared error per sample.
- `Grad` (`grad_penalty`): smoothness of a displacement field.
- `Dice` (`soft_dice`): soft Dice on one-hot label maps.

Every loss returns one value per sample, ``(batch,)``, computed in float32, and is registered
for Keras serialization under the package ``vxmtf``.
"""

from vxmtf.losses.dice import Dice, soft_dice
from vxmtf.losses.grad import Grad, grad_penalty
from vxmtf.losses.mse import MSE, mean_squared_error
from vxmtf.losses.ncc import NCC, local_ncc, mean_local_ncc

__all__ = [
    "MSE",
    "NCC",
    "Dice",
    "Grad",
    "grad_penalty",
    "local_ncc",
    "mean_local_ncc",
    "mean_squared_error",
    "soft_dice",
]
