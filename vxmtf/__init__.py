"""vxmtf: learning-based deformable registration (VoxelMorph) in TensorFlow 2 / Keras 3.

Importing the package registers every public layer, loss and model with Keras serialization
(package ``vxmtf``), so ``keras.models.load_model`` needs no ``custom_objects``. It sets no
environment variables and changes no global Keras or TensorFlow state, with one exception: when
Python imports it to run one of its command lines (``python -m vxmtf.register``, ``python -m
vxmtf.export``), it runs the command lines' start-up first (`vxmtf_cli.start`: TensorFlow's
environment defaults and a quiet import), since the package is imported before the command's
own module and would otherwise load TensorFlow with its start-up notices printed.
"""

import sys

__version__ = "0.1.0"

# While `python -m vxmtf.<tool>` locates its module, sys.argv[0] is "-m" (the Python
# documentation of -m); no other import of this package sees that value.
if sys.argv[:1] == ["-m"] and "tensorflow" not in sys.modules:
    import vxmtf_cli

    vxmtf_cli.start()

from vxmtf import layers, losses, networks  # noqa: E402,F401  (registration on import)
