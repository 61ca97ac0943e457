"""Engine: configuration and recipes, the learning-rate schedule, the training loop, evaluation, checkpoints."""

from .config import RECIPES, TrainConfig, recipe_config
from .schedule import Schedule, lr_at

__all__ = ["RECIPES", "Schedule", "TrainConfig", "lr_at", "recipe_config"]
