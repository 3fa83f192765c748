"""Weights to ``.safetensors``: a format that holds only tensors, so loading it never runs code
(the logic of tools/convert_weights.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from ..utils.io import atomic_write
from ..utils.paths import check_output_file, refuse_replacing_inputs
from .weights import WeightsError, read_checkpoint

__all__ = ["ConversionReport", "save_safetensors"]

logger = logging.getLogger(__name__)


@dataclass
class ConversionReport:
    """What :func:`save_safetensors` wrote: tensor count, bytes, and the entries it left out."""

    output: str
    tensors: int = 0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)


def _as_tensor(value: Any) -> torch.Tensor | None:
    """A standalone contiguous CPU copy of a tensor or numeric numpy value, else None
    (safetensors refuses tensors that share memory, as tied or viewed weights do)."""
    if isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            return None
        return torch.from_numpy(np.array(array, copy=True, order="C"))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone(memory_format=torch.contiguous_format)
    return None


def save_safetensors(
    source: str, output: str, *, force: bool = False, trust_file: bool = False
) -> ConversionReport:
    """Write the model tensors of checkpoint ``source`` (.pth, .pkl, .safetensors; read by
    :func:`read_checkpoint`, so untrusted pickles stay refused unless ``trust_file``) to
    ``output`` (.safetensors), atomically.

    The metadata keeps what loading needs besides the tensors: ``matching_heuristics`` and
    ``__author__`` (Detectron2's name matching for model-zoo and Caffe2 files), and the source
    file's name. Optimizer and trainer state are not written (weights only). An existing
    ``output`` is refused unless ``force``. Non-numeric entries are left out, listed in the
    report and logged.
    """
    if not output.endswith(".safetensors"):
        raise WeightsError(f"output {output} must end in .safetensors (MODEL.WEIGHTS reads it "
                           "by that suffix)")
    check_output_file(output, "output")  # a folder, or nowhere to write: before the work
    refuse_replacing_inputs([output], [source.split("?", 1)[0]], "output")
    if os.path.exists(output) and not force:
        raise FileExistsError(f"{output} already exists; pass --force to replace it")
    checkpoint = read_checkpoint(source, trust_file=trust_file)
    state: Mapping[str, Any] = checkpoint["model"]
    tensors: dict[str, torch.Tensor] = {}
    skipped = []
    for name, value in state.items():
        tensor = _as_tensor(value)
        if tensor is None:
            skipped.append(f"{name} ({type(value).__name__})")
        else:
            tensors[str(name)] = tensor
    if not tensors:
        raise WeightsError(f"weights {source} hold no tensor to convert (entries: "
                           f"{', '.join(skipped[:5]) or 'none'})")
    if skipped:
        logger.warning(f"Left out {len(skipped)} entries of {source} that are not numeric "
                       f"arrays: {', '.join(skipped[:8])}")
    metadata = {
        "format": "pt",
        "source": os.path.basename(source.split("?", 1)[0]),
        "matching_heuristics": str(bool(checkpoint.get("matching_heuristics", False))),
    }
    if checkpoint.get("__author__"):
        metadata["__author__"] = str(checkpoint["__author__"])
    data = safetensors_bytes(tensors, metadata=metadata)
    atomic_write(output, data, durable=True)  # a failure names output
    logger.info(f"Wrote {len(tensors)} tensors ({len(data) / 2**20:.1f} MiB) of {source} to "
                f"{output}")
    return ConversionReport(output=output, tensors=len(tensors), bytes=len(data),
                            skipped=skipped, metadata=metadata)
