"""Data layer: synthetic dataset generator, COCO preparation, Detectron2 registration, and the
bad-data guards used by training (validation pass, safe mapper, train loader).

Importing this package registers the synthetic datasets (see :mod:`.datasets`); your own
COCO-panoptic folders are registered with :func:`register_panoptic_dataset` (see :mod:`.custom`).
"""

from .build import SkippedSamplesHook, build_train_loader, validate_cfg_datasets
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
from .custom import (
    configure_panoptic_folders,
    prepare_panoptic_dataset,
    register_panoptic_dataset,
    register_panoptic_folders,
)
from .datasets import (
    SYNTHETIC_DATASET_NAMES,
    panoptic_separated_metadata,
    panoptic_standard_metadata,
    register_panoptic,
    register_synthetic,
)
from .mapper import BadSampleError, SafeDatasetMapper, SkipCountingLoader
from .synthetic import (
    SYNTHETIC_CATEGORIES,
    SyntheticDatasetMismatch,
    SyntheticSample,
    generate_synthetic_dataset,
    render_sample,
    synthetic_metadata,
    synthetic_split_paths,
)
from .validate import (
    DatasetValidationError,
    ValidationReport,
    check_dataset_names,
    validate_datasets,
)

__all__ = [
    "BadSampleError",
    "ConversionStats",
    "DatasetValidationError",
    "PanopticFormatError",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DATASET_NAMES",
    "SafeDatasetMapper",
    "SkipCountingLoader",
    "SkippedSamplesHook",
    "SyntheticDatasetMismatch",
    "SyntheticSample",
    "ValidationReport",
    "build_train_loader",
    "check_dataset_names",
    "configure_panoptic_folders",
    "convert_panoptic_to_semantic",
    "default_datasets_root",
    "generate_synthetic_dataset",
    "id_to_rgb",
    "panoptic_separated_metadata",
    "panoptic_standard_metadata",
    "prepare_coco_panoptic_fpn",
    "prepare_panoptic_dataset",
    "register_panoptic",
    "register_panoptic_dataset",
    "register_panoptic_folders",
    "register_synthetic",
    "render_sample",
    "rgb_to_id",
    "semantic_label_map",
    "synthetic_metadata",
    "synthetic_split_paths",
    "validate_cfg_datasets",
    "validate_datasets",
]
