"""Training and tool setup: the config setup every tool calls (:mod:`.defaults`), the trainer,
its loop, hooks and checkpoints."""

from ..evaluation.build import MetricsJSONWriter, build_panoptic_evaluators
from .checkpoint import checkpoint_to_load
from .defaults import panoptic_metadata, setup, setup_cfg
from .hooks import TrainingInterrupted
from .trainer import Trainer
from .weights import HeadShapeMismatch, WeightsError, check_head_shapes, load_weights

__all__ = [
    "HeadShapeMismatch",
    "MetricsJSONWriter",
    "Trainer",
    "TrainingInterrupted",
    "WeightsError",
    "build_panoptic_evaluators",
    "check_head_shapes",
    "checkpoint_to_load",
    "load_weights",
    "panoptic_metadata",
    "setup",
    "setup_cfg",
]
