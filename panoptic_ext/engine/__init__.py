"""Training and tool setup: the config setup every tool calls (:mod:`.defaults`), the trainer,
its loop, hooks and checkpoints."""

from .checkpoint import checkpoint_to_load
from .defaults import panoptic_metadata, setup, setup_cfg
from .hooks import TrainingInterrupted
from .trainer import Trainer
from .weights import HeadShapeMismatch, WeightsError, check_head_shapes, load_weights

__all__ = [
    "HeadShapeMismatch",
    "Trainer",
    "TrainingInterrupted",
    "WeightsError",
    "check_head_shapes",
    "checkpoint_to_load",
    "load_weights",
    "panoptic_metadata",
    "setup",
    "setup_cfg",
]
