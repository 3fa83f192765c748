from .hooks import TrainingInterrupted
from .trainer import MetricsJSONWriter, Trainer, build_panoptic_evaluators, setup_cfg

__all__ = [
    "MetricsJSONWriter",
    "Trainer",
    "TrainingInterrupted",
    "build_panoptic_evaluators",
    "setup_cfg",
]
