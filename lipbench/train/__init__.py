"""Training: run configuration, the deterministic resumable loop, and model files."""

from lipbench.train.artifacts import ModelMetadata, build_from_metadata, load_weights, save_weights
from lipbench.train.config import Recipe, TrainConfig, resolve_train_config
from lipbench.train.loop import TrainingDivergedError, TrainResult, accuracy, train_model
from lipbench.train.run import config_from_profile, run_training
from lipbench.train.stage import run_train_stage, train_kept

__all__ = [
    "ModelMetadata",
    "build_from_metadata",
    "load_weights",
    "save_weights",
    "Recipe",
    "TrainConfig",
    "resolve_train_config",
    "TrainingDivergedError",
    "TrainResult",
    "accuracy",
    "train_model",
    "config_from_profile",
    "run_training",
    "run_train_stage",
    "train_kept",
]
