"""Data layer: dataset metadata and registration, the synthetic generator, COCO preparation,
your own folders, and the bad-data guards used by training (validation pass, safe loader).

Importing this package registers the synthetic datasets (see :mod:`.builtin`); your own
COCO-panoptic folders are registered with :func:`register_panoptic_dataset` (see :mod:`.custom`).

Modules: :mod:`.metadata` (category lists -> Detectron2 metadata and id maps), :mod:`.builtin`
(registration), :mod:`.synthetic` (generator), :mod:`.coco_prep` (COCO stuff PNGs),
:mod:`.custom` (your folders), :mod:`.validate` (validation pass), :mod:`.loader` (training
loader). The file format itself is :mod:`panoptic_ext.formats`.
"""

from ..formats import PanopticFormatError, id_to_rgb, rgb_to_id
from .builtin import SYNTHETIC_DATASET_NAMES, register_panoptic, register_synthetic
from .cityscapes import prepare_cityscapes_panoptic, register_cityscapes_panoptic  # noqa: F401
from .coco_prep import ConversionStats, convert_panoptic_to_semantic, prepare_coco_panoptic_fpn
from .custom import (
    configure_panoptic_folders,
    prepare_panoptic_dataset,
    register_panoptic_dataset,
    register_panoptic_folders,
)
from .loader import (
    BadSampleError,
    ResumableTrainingSampler,
    SafeDatasetMapper,
    SkipCountingLoader,
    SkippedSamplesHook,
    build_train_loader,
    validate_cfg_datasets,
)
from .metadata import (
    THINGS_STUFF_COLOR,
    DatasetMetadataError,
    contiguous_to_dataset_ids,
    dataset_categories,
    default_datasets_root,
    panoptic_separated_metadata,
    panoptic_standard_metadata,
    semantic_label_map,
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
from .validate import (
    DatasetValidationError,
    ValidationReport,
    check_dataset_names,
    validate_datasets,
)

__all__ = [
    "BadSampleError",
    "ConversionStats",
    "DatasetMetadataError",
    "DatasetValidationError",
    "PanopticFormatError",
    "ResumableTrainingSampler",
    "SYNTHETIC_CATEGORIES",
    "SYNTHETIC_DATASET_NAMES",
    "SafeDatasetMapper",
    "SkipCountingLoader",
    "SkippedSamplesHook",
    "SyntheticDatasetMismatch",
    "SyntheticSample",
    "THINGS_STUFF_COLOR",
    "ValidationReport",
    "build_train_loader",
    "check_dataset_names",
    "configure_panoptic_folders",
    "contiguous_to_dataset_ids",
    "convert_panoptic_to_semantic",
    "dataset_categories",
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
