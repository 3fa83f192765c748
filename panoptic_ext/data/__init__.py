"""Data layer: synthetic dataset generator, COCO preparation and Detectron2 registration.

Importing this package registers the synthetic datasets (see :mod:`.datasets`).
"""

from .coco_prep import (
    ConversionStats,
    PanopticFormatError,
    convert_panoptic_to_semantic,
    default_datasets_root,
    id_to_rgb,
    prepare_coco_panoptic_fpn,
    rgb_to_id,
    semantic_label_map,
)
from .datasets import (
    SYNTHETIC_DATASET_NAMES,
    panoptic_separated_metadata,
    panoptic_standard_metadata,
    register_panoptic,
    register_synthetic,
)
from .synthetic import (
    SYNTHETIC_CATEGORIES,
    SyntheticDatasetMismatch,
    SyntheticSample,
    generate_synthetic_dataset,
    render_sample,
    synthetic_metadata,
    synthetic_split_paths,
)

__all__ = [
    "ConversionStats",
    "PanopticFormatError",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DATASET_NAMES",
    "SyntheticDatasetMismatch",
    "SyntheticSample",
    "convert_panoptic_to_semantic",
    "default_datasets_root",
    "generate_synthetic_dataset",
    "id_to_rgb",
    "panoptic_separated_metadata",
    "panoptic_standard_metadata",
    "prepare_coco_panoptic_fpn",
    "register_panoptic",
    "register_synthetic",
    "render_sample",
    "rgb_to_id",
    "semantic_label_map",
    "synthetic_metadata",
    "synthetic_split_paths",
]
