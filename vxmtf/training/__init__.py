"""Training: configs, strategy choice, the fit loop, checkpoints and resume."""

from vxmtf.training.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from vxmtf.training.trainer import TrainResult, train

__all__ = ["DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "TrainResult", "train"]
