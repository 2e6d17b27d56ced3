"""Registration of pairs with a trained model: arrays (`Registrator`) and files (`register_files`).

- `registrator`: `Registrator`, one pair of NumPy volumes in, the displacement on their grid out
  (the run's preprocessing applied and undone), and `warp_volume`;
- `predictors`: the network part of a `Registrator` (Keras whole or tiled, SavedModel);
- `files`: `register_files`, one pair of files in, results on the fixed grid with its header.

The command line is `python -m vxmtf.register` (`vxmtf/register.py`).
"""

from vxmtf.data.preprocess import resize_displacement
from vxmtf.registration.files import RegisteredFiles, register_files
from vxmtf.registration.registrator import Registration, Registrator, warp_volume
from vxmtf.training.run_folder import find_run_config, load_run_config, resolve_model_path

__all__ = [
    "RegisteredFiles",
    "Registration",
    "Registrator",
    "find_run_config",
    "load_run_config",
    "register_files",
    "resize_displacement",
    "resolve_model_path",
    "warp_volume",
]
