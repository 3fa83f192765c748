from .trainer import MetricsJSONWriter, Trainer, build_panoptic_evaluators, setup_cfg

__all__ = ["MetricsJSONWriter", "Trainer", "build_panoptic_evaluators", "setup_cfg"]
