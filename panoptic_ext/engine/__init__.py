from .checkpoint import HeadShapeMismatch, check_head_shapes, checkpoint_to_load
from .hooks import TrainingInterrupted
from .trainer import MetricsJSONWriter, Trainer, build_panoptic_evaluators, setup_cfg

__all__ = [
    "HeadShapeMismatch",
    "MetricsJSONWriter",
    "Trainer",
    "TrainingInterrupted",
    "build_panoptic_evaluators",
    "check_head_shapes",
    "checkpoint_to_load",
    "setup_cfg",
]
