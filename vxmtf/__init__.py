"""vxmtf: learning-based deformable registration (VoxelMorph) in TensorFlow 2 / Keras 3.

Importing the package registers every public layer, loss and model with Keras serialization
(package ``vxmtf``), so ``keras.models.load_model`` needs no ``custom_objects``. It sets no
environment variables and changes no global Keras or TensorFlow state.
"""

__version__ = "0.1.0"

from vxmtf import layers, losses, networks  # noqa: E402,F401  (registration on import)
