"""Fast, exact panoptic quality evaluation (drop-in for panopticapi and Detectron2).

``pq_compute`` replaces ``panopticapi.evaluation.pq_compute`` (same results, same errors);
``image_pq_stats`` + ``PQStats`` + ``summarize_pq`` give the same numbers from in-memory id
maps; ``PanopticEvaluator`` replaces Detectron2's ``COCOPanopticEvaluator``,
``FastCOCOEvaluator`` its ``COCOEvaluator`` (hotcoco's COCOeval, pycocotools' numbers);
``build_evaluator`` is
the evaluator set (PQ, AP, mIoU) every tool uses; ``PanopticGroundTruth`` reads a dataset's
ground truth for every scorer.
"""

from .build import (
    MetricsJSONWriter,
    build_evaluator,
    build_panoptic_evaluators,
    evaluation_backends,
)
from .coco_ap import FastCOCOEvaluator
from .ground_truth import PanopticGroundTruth
from .panoptic_evaluator import PanopticEvaluator, pq_results_to_metrics
from .pq import (
    OFFSET,
    VOID,
    ImpossiblePQError,
    PanopticFormatError,
    PQStats,
    check_pq_range,
    compute_stats_from_files,
    evaluate_files,
    format_class_table,
    format_pq_table,
    format_summary_table,
    image_pq_stats,
    pq_compute,
    read_panoptic_png,
    rgb_to_id,
    summarize_pq,
)
from .sem_seg import FastSemSegEvaluator

__all__ = [
    "MetricsJSONWriter",
    "PanopticGroundTruth",
    "build_evaluator",
    "build_panoptic_evaluators",
    "evaluation_backends",
    "FastCOCOEvaluator",
    "FastSemSegEvaluator",
    "ImpossiblePQError",
    "check_pq_range",
    "OFFSET",
    "VOID",
    "PanopticEvaluator",
    "PanopticFormatError",
    "PQStats",
    "compute_stats_from_files",
    "evaluate_files",
    "format_class_table",
    "format_pq_table",
    "format_summary_table",
    "image_pq_stats",
    "pq_compute",
    "pq_results_to_metrics",
    "read_panoptic_png",
    "rgb_to_id",
    "summarize_pq",
]
