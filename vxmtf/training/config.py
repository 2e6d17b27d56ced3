"""Typed configuration of a training run, saved as JSON beside its checkpoints."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from vxmtf.atomic import atomic_write_text
from vxmtf.checks import check_choice, check_int, check_positive
from vxmtf.data.pipeline import MODES
from vxmtf.data.preprocess import PreprocessConfig

IMAGE_LOSSES = ("ncc", "mse")
# Learning-rate schedules: "constant" (VoxelMorph's), or "cosine": a half cosine from `lr` at the
# first step to COSINE_FINAL_FRACTION * lr at the run's last (epochs * steps_per_epoch; Loshchilov
# and Hutter, SGDR, ICLR 2017, without restarts), constant after it.
LR_SCHEDULES = ("constant", "cosine")
COSINE_FINAL_FRACTION = 0.01
# Regularisation weights of the VoxelMorph papers (Balakrishnan et al., TMI 2019, Sec. IV-D):
# lambda = 1 with NCC, 0.01 with MSE (intensities in [0, 1]).
DEFAULT_LAMBDA = {"ncc": 1.0, "mse": 0.01}
# Defaults that depend on the data (fields left None). Files: VoxelMorph's recipe, scan-to-scan
# at a constant learning rate of 1e-4 with the papers' lambda. The built-in synthetic data: the
# CVPR 2018 scan-to-atlas setting, tuned for the first run's few minutes on a CPU (README,
# "Quickstart"): 3,000 steps at a 20x learning rate decayed by a half cosine, and a weaker
# smoothness term with NCC (0.3). With the smoother synthetic deformations of the same change,
# Dice after registration went from 0.627 to about 0.75 (benchmarks/RESULTS.md, "The first
# run"; `python -m benchmarks.first_run`).
SYNTHETIC_DEFAULTS = {
    "mode": "atlas",
    "lr": 2e-3,
    "lr_schedule": "cosine",
    "steps_per_epoch": 300,
    "reg_weight": {"ncc": 0.3, "mse": DEFAULT_LAMBDA["mse"]},
}
# The synthetic generator's defaults before `DataConfig.synthetic_deformation` existed (fractions
# of the smallest size), for run configs saved then (`RunConfig.from_dict`).
EARLIER_SYNTHETIC = {"deformation": 0.056, "smoothness": 0.25}
FILE_DEFAULTS = {
    "mode": "pairs",
    "lr": 1e-4,
    "lr_schedule": "constant",
    "steps_per_epoch": 50,
    "reg_weight": DEFAULT_LAMBDA,
}


def data_defaults(data) -> dict:
    """The data-dependent defaults for `DataConfig.data`: `mode`, `lr`, `lr_schedule`,
    `steps_per_epoch` and `reg_weight` (a dict by image loss)."""
    return SYNTHETIC_DEFAULTS if data is None else FILE_DEFAULTS


@dataclass
class DataConfig:
    """Where pairs come from and how volumes are prepared.

    `data=None` trains on the embedded synthetic generator (`vxmtf.data.synthetic`).
    `mode=None` is `"atlas"` for the synthetic data and `"pairs"` for files (`data_defaults`).
    """

    data: str | None = None
    labels: str | None = None
    atlas: str | None = None
    mode: str | None = None
    synthetic_shape: tuple[int, ...] = (32, 32, 32)
    synthetic_labels: int = 12
    # Displacement std and correlation length of the synthetic pairs, in voxels (None: the
    # generator's defaults, 0.044 * and 1/2 of the smallest size; `vxmtf.data.SyntheticPairs`).
    synthetic_deformation: float | None = None
    synthetic_smoothness: float | None = None
    downsample: int = 1
    normalize: str = "minmax"
    cache: bool = False
    val_pairs: int = 4

    def __post_init__(self):
        self.synthetic_shape = tuple(int(s) for s in self.synthetic_shape)
        if self.mode is None:
            self.mode = data_defaults(self.data)["mode"]
        check_choice("mode", self.mode, MODES)
        if len(self.synthetic_shape) not in (2, 3):
            raise ValueError(
                "`synthetic_shape` must give 2 or 3 sizes. "
                f"Received: synthetic_shape={self.synthetic_shape}"
            )
        if self.synthetic_deformation is not None and not (
            math.isfinite(self.synthetic_deformation) and self.synthetic_deformation >= 0
        ):
            raise ValueError(
                "`synthetic_deformation` must be None or a finite number >= 0 (voxels). "
                f"Received: synthetic_deformation={self.synthetic_deformation}"
            )
        check_positive(
            "synthetic_smoothness", self.synthetic_smoothness, unit="voxels", optional=True
        )
        if self.downsample < 1:
            raise ValueError(f"`downsample` must be >= 1. Received: downsample={self.downsample}")

    def preprocess(self, multiple: int = 1) -> PreprocessConfig:
        """How each volume of the run is prepared, padded to `multiple` (the network's
        `size_multiple`; 1 for a SavedModel, which pads inside its graph)."""
        return PreprocessConfig(
            normalize=self.normalize, downsample=self.downsample, multiple=multiple
        )


@dataclass
class ModelConfig:
    """Architecture of `vxmtf.networks.VxmDense` (defaults: the VoxelMorph papers')."""

    enc_features: tuple[int, ...] = (16, 32, 32, 32)
    dec_features: tuple[int, ...] = (32, 32, 32, 32, 32, 16, 16)
    int_steps: int = 7
    int_resolution: int = 2
    bidir: bool = False

    def __post_init__(self):
        self.enc_features = tuple(int(f) for f in self.enc_features)
        self.dec_features = tuple(int(f) for f in self.dec_features)

    @property
    def levels(self) -> int:
        return len(self.enc_features)

    @property
    def size_multiple(self) -> int:
        """Spatial sizes must be multiples of this (`vxmtf.networks.vxm_dense.size_multiple`)."""
        from vxmtf.networks.vxm_dense import size_multiple

        return size_multiple(self.enc_features, self.int_steps, self.int_resolution)

    def kwargs(self) -> dict:
        return {
            "enc_features": self.enc_features,
            "dec_features": self.dec_features,
            "int_steps": self.int_steps,
            "int_resolution": self.int_resolution,
            "bidir": self.bidir,
        }


@dataclass
class TrainConfig:
    """Optimisation, losses, run-time switches and outputs.

    `lr`, `lr_schedule`, `steps_per_epoch` and `reg_weight` left None take the data's defaults
    when the `RunConfig` is made (`data_defaults`: for files 1e-4, constant, 50 and the papers'
    lambda, 1 with NCC and 0.01 with MSE; for the synthetic data 2e-3, cosine, 300 and 0.3 with
    NCC).
    """

    model_dir: str = "runs/vxm"
    image_loss: str = "ncc"
    ncc_window: int = 9
    reg_weight: float | None = None  # --lambda; None = the data's default (`data_defaults`)
    seg_weight: float = 0.0
    epochs: int = 10
    steps_per_epoch: int | None = None
    batch_size: int = 1
    lr: float | None = None
    lr_schedule: str | None = None
    # Linear warm-up of Adam's rate from 0 to `lr` over the first N steps, then the schedule
    # (`trainer.learning_rate`). 0: none, as in VoxelMorph.
    warmup_steps: int = 0
    seed: int = 0
    mixed_precision: bool = False
    xla: bool = False
    # Recompute the U-Net's activations in the backward pass (`VxmDense(recompute=True)`):
    # lower peak memory at about 1.2-1.4x the step time. A switch of how gradients are computed,
    # not of the architecture: the weights are the same, and a run may be resumed with or
    # without it.
    recompute: bool = False
    resume: bool = False
    save_every: int = 0  # also back up every N steps (0: at the end of each epoch only)
    export: bool = True
    init_weights: str | None = None  # a trained `.keras` VxmDense to start from (fine-tuning)

    def __post_init__(self):
        check_choice("image_loss", self.image_loss, IMAGE_LOSSES)
        if self.lr_schedule is not None:
            check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        for name in ("epochs", "steps_per_epoch", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1. Received: {name}={value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"`lr` must be a finite number > 0. Received: lr={self.lr}")
        weights = (self.seg_weight, 0.0 if self.reg_weight is None else self.reg_weight)
        if not all(math.isfinite(w) and w >= 0 for w in weights):
            raise ValueError(
                "Loss weights must be finite numbers >= 0. "
                f"Received: reg_weight={self.reg_weight}, seg_weight={self.seg_weight}"
            )
        self.warmup_steps = check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.save_every < 0:
            raise ValueError(
                f"`save_every` must be >= 0 (0: at each epoch's end only). "
                f"Received: save_every={self.save_every}"
            )


@dataclass
class RunConfig:
    """Everything that defines a training run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        defaults = data_defaults(self.data.data)
        for name in ("lr", "lr_schedule", "steps_per_epoch"):
            if getattr(self.train, name) is None:
                setattr(self.train, name, defaults[name])
        if self.train.reg_weight is None:
            self.train.reg_weight = defaults["reg_weight"][self.train.image_loss]
        total = self.train.epochs * self.train.steps_per_epoch
        if self.train.warmup_steps >= total:
            raise ValueError(
                "`warmup_steps` must be fewer than the run's steps (epochs x steps_per_epoch = "
                f"{self.train.epochs} x {self.train.steps_per_epoch} = {total}). "
                f"Received: warmup_steps={self.train.warmup_steps}"
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        unknown = set(values) - {"data", "model", "train"}
        if unknown:
            raise ValueError(
                f"Unknown sections in a run config: {sorted(unknown)}; expected data, model, train."
            )
        train = dict(values.get("train", {}))
        data = dict(values.get("data", {}))
        # Runs saved before `lr_schedule` existed trained at a constant rate, and synthetic runs
        # saved before `synthetic_deformation` existed on the generator's defaults of then: a
        # resumed or evaluated one keeps them rather than take today's defaults.
        train.setdefault("lr_schedule", "constant")
        if data.get("data") is None and "synthetic_deformation" not in data:
            size = min(data.get("synthetic_shape", DataConfig.synthetic_shape))
            data["synthetic_deformation"] = EARLIER_SYNTHETIC["deformation"] * size
            data.setdefault("synthetic_smoothness", EARLIER_SYNTHETIC["smoothness"] * size)
        return cls(
            data=DataConfig(**data),
            model=ModelConfig(**values.get("model", {})),
            train=TrainConfig(**train),
        )

    def preprocess(self) -> PreprocessConfig:
        """How the run prepares each volume for its network (`DataConfig.preprocess` at the
        model's size multiple)."""
        return self.data.preprocess(self.model.size_multiple)

    def save(self, path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> RunConfig:
        """Reads a `config.json`, naming the file in any error.

        Raises:
            FileNotFoundError: the file does not exist.
            ValueError: the file is not a run configuration (not JSON, unknown or bad fields).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Run configuration not found: {path}")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as error:
            raise ValueError(
                f"Could not read the run configuration {path}: expected the config.json a "
                f"training run writes. Received: error={type(error).__name__}: {error}"
            ) from error
