"""The one way every tool reads and loads model weights (training, --eval-only, demo, tuning,
export), so a file that does not fit the model is an error naming it, never a random network.

All file reading goes through :func:`read_checkpoint`, which runs no code from the file
(restricted unpickling, see :mod:`.unpickling`) unless the config trusts it.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.config import CfgNode
from detectron2.utils.file_io import PathManager
from safetensors import safe_open

from .unpickling import (
    RefusedGlobal,
    describe_error,
    load_pickle,
    refused_by_torch,
    torch_load_weights_only,
)

__all__ = ["TRUST_KEY", "WeightsError", "WeightsReport", "load_weights", "read_checkpoint",
           "trust_weights_file"]

logger = logging.getLogger(__name__)


class WeightsError(ValueError):
    """MODEL.WEIGHTS is empty, missing, unreadable, or does not fit the model."""


@dataclass
class WeightsReport:
    """What :func:`load_weights` did: how many of the model's tensors came from the file."""

    path: str
    loaded: int = 0
    total: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    incorrect_shapes: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.loaded < self.total


def _local(path: str) -> str:
    if os.path.exists(path):
        return path
    try:
        local = PathManager.get_local_path(path)  # detectron2:// and http(s):// URLs
    except Exception as exc:
        raise WeightsError(f"cannot fetch weights {path}: {type(exc).__name__}: {exc}. "
                           "Download the file and pass its local path as MODEL.WEIGHTS") from exc
    return local


TRUST_KEY = "MODEL.PANOPTIC_EXT.TRUST_WEIGHTS_FILE"


def trust_weights_file(cfg: CfgNode) -> bool:
    """The config's opt-in to unpickle weight files in full (:data:`TRUST_KEY`); the one
    place the key is read."""
    value = cfg.MODEL.PANOPTIC_EXT.TRUST_WEIGHTS_FILE
    if not isinstance(value, bool):
        raise ValueError(f"{TRUST_KEY} must be True or False, got {value!r}")
    return value


def _split_query(path: str) -> tuple[str, bool]:
    """``path`` without Detectron2's ``?matching_heuristics=True`` suffix, and whether it
    had it (a file whose name holds "?" is taken as it is)."""
    if "?" not in path or os.path.exists(path):
        return path, False
    parsed = urlparse(path)
    queries = parse_qs(parsed.query)
    if set(queries) != {"matching_heuristics"}:
        raise WeightsError(f"MODEL.WEIGHTS {path}: the only query Detectron2 knows is "
                           "?matching_heuristics=True")
    return parsed._replace(query="").geturl(), queries["matching_heuristics"] == ["True"]


def _refused(path: str, what: str) -> WeightsError:
    converted = os.path.splitext(path.split("?", 1)[0])[0] + ".safetensors"
    return WeightsError(
        f"weights {path} were refused: reading them would build {what}, which weight files "
        "do not need and which can run code from the file (only tensors, numpy arrays, "
        "numbers and containers are read). If you trust the file, set "
        f"{TRUST_KEY} True (it then runs whatever the file holds), or convert it once: "
        f"python tools/convert_weights.py --trust-input {path} {converted}"
    )


def _read_safetensors(local: str) -> dict[str, Any]:
    """A ``.safetensors`` file as a checkpoint; the metadata tools/convert_weights.py writes
    restores Detectron2's name matching (``matching_heuristics``, ``__author__``)."""
    with safe_open(local, framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        data: dict[str, Any] = {"model": {k: f.get_tensor(k) for k in f.keys()}}
    if meta.get("matching_heuristics") == "True":
        data["matching_heuristics"] = True
    if meta.get("__author__"):
        data["__author__"] = meta["__author__"]
    return data


def _unpickle(local: str, path: str, trust_file: bool) -> Any:
    if trust_file:
        logger.warning(f"{TRUST_KEY}: unpickling weights {path} in full; this runs any code "
                       "the file holds (only for files you trust)")
    if local.endswith(".pkl"):
        with open(local, "rb") as f:
            return (pickle.load if trust_file else load_pickle)(f, encoding="latin1")
    if trust_file:
        return torch.load(local, map_location="cpu", weights_only=False)
    return torch_load_weights_only(local)


def read_checkpoint(path: str, *, trust_file: bool = False) -> dict[str, Any]:
    """A checkpoint file as ``{"model": state dict, ...}`` (.pth/.pt: torch; .pkl: Detectron2
    model zoo or Caffe2 pickles, then ``matching_heuristics`` is set; .safetensors), or a
    :class:`WeightsError` naming the file and what is wrong with it.

    Nothing in the file is run: .pth is read weights-only, .pkl by an unpickler that builds
    only containers and numpy arrays; a file needing more is refused, naming the type, unless
    ``trust_file`` (:data:`TRUST_KEY`) restores full unpickling, logged as a warning.
    """
    if not path:
        raise WeightsError("no weights file given (MODEL.WEIGHTS is empty)")
    path_only, heuristics = _split_query(path)
    local = _local(path_only)
    if os.path.isdir(local):
        raise WeightsError(f"MODEL.WEIGHTS {path} is a folder; pass a checkpoint file in it "
                           "(e.g. model_final.pth)")
    if not os.path.isfile(local):
        raise WeightsError(f"MODEL.WEIGHTS {path}: no such file")
    try:
        if local.endswith(".safetensors"):
            data = _read_safetensors(local)
        else:
            data = _unpickle(local, path, trust_file)
    except RefusedGlobal as exc:
        raise _refused(path, exc.name) from None
    except Exception as exc:
        refused = refused_by_torch(exc)
        if refused is not None:
            raise _refused(path, refused) from None
        raise WeightsError(
            f"cannot read weights {path}: {describe_error(exc)}. Is it a "
            "checkpoint saved by Detectron2 or torch.save (.pth), a model-zoo .pkl or a "
            ".safetensors file?"
        ) from exc
    if not isinstance(data, Mapping):
        raise WeightsError(f"weights {path} hold a {type(data).__name__}, not a state dict "
                           "(a mapping of parameter names to tensors)")
    data = dict(data)
    if local.endswith(".pkl") and not ("model" in data and "__author__" in data):
        # Caffe2 / Detectron1 pickles: names are matched to the model's by heuristics.
        blobs = data.get("blobs", data)
        state = {k: v for k, v in blobs.items() if not str(k).endswith("_momentum")}
        return {"model": state, "__author__": "Caffe2", "matching_heuristics": True}
    if "model" not in data:
        data = {"model": data}
    if not isinstance(data["model"], Mapping):
        raise WeightsError(f"weights {path}: 'model' holds a {type(data['model']).__name__}, "
                           "not a state dict")
    if heuristics:
        data["matching_heuristics"] = True
    return data


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


# ----------------------------------------------------------------------------- head shapes

# Parameter -> (what it is, config key, how its first dimension counts classes).
_HEADS: dict[str, tuple[str, str, str]] = {
    "roi_heads.box_predictor.cls_score.weight":
        ("box classifier", "MODEL.ROI_HEADS.NUM_CLASSES", "things+1"),
    "roi_heads.box_predictor.bbox_pred.weight":
        ("box regressor", "MODEL.ROI_HEADS.NUM_CLASSES", "4*things"),
    "roi_heads.mask_head.predictor.weight":
        ("mask predictor", "MODEL.ROI_HEADS.NUM_CLASSES", "things"),
    "sem_seg_head.predictor.weight":
        ("semantic predictor", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "stuff+1"),
}


class HeadShapeMismatch(WeightsError):
    """A checkpoint's heads were trained for other classes than the model has."""


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 'es'}"


def _classes(rows: int, rule: str) -> str:
    """How many classes a head's first dimension stands for, in words."""
    if rule == "things+1":
        return _n(rows - 1, "thing class")
    if rule in ("4*things", "things"):
        count = rows // 4 if rule == "4*things" else rows
        return _n(count, "thing class") + (" (or class-agnostic)" if count == 1 else "")
    return f"{_n(rows, 'semantic class')} ({rows - 1} stuff + 'things')"


def _read_model_state(path: str, trust_file: bool = False) -> Mapping[str, Any]:
    """The model weights of a checkpoint file, read by the one reader of weights files."""
    return read_checkpoint(path, trust_file=trust_file)["model"]


def check_head_shapes(
    model: torch.nn.Module,
    checkpoint: str | Mapping[str, Any],
    *,
    strict: bool = False,
    dataset: str = "",
    source: str = "",
    trust_file: bool = False,
) -> list[str]:
    """Compare the class-dependent head weights of ``checkpoint`` (a path or a state dict)
    with ``model``'s, and name every head whose class count differs.

    Detectron2 skips such weights with a terse shape warning; for evaluation that silently
    means untrained heads, so ``strict`` raises :class:`HeadShapeMismatch`; otherwise
    (fine-tuning on other categories, where re-initialised heads are expected) one warning
    is logged. ``dataset`` names where the model's classes come from, ``source`` the file
    (when ``checkpoint`` is a state dict), for the message; ``trust_file`` as for
    :func:`read_checkpoint`.
    Returns the mismatch descriptions (empty when all fit or the heads are absent).
    """
    source = checkpoint if isinstance(checkpoint, str) else (source or "the checkpoint")
    if isinstance(checkpoint, str):
        if not checkpoint:
            return []
        try:
            state = _read_model_state(checkpoint, trust_file)
        except Exception as exc:  # the load itself reports an unreadable file, by name
            if strict:
                raise
            logger.debug("Head check skipped: cannot read %s (%s)", checkpoint, exc)
            return []
    else:
        state = checkpoint
    ours = getattr(model, "module", model).state_dict()
    problems = []
    for key, (what, cfg_key, rule) in _HEADS.items():
        if key not in state or key not in ours:
            continue
        theirs, mine = tuple(np.shape(state[key])), tuple(ours[key].shape)
        if theirs[:1] != mine[:1]:
            problems.append(
                f"{key} ({what}): checkpoint has {_classes(theirs[0], rule)} (shape "
                f"{theirs}), the model {_classes(mine[0], rule)} (shape {mine}, {cfg_key})"
            )
    if not problems:
        return problems
    origin = f" of {dataset}" if dataset else ""
    listing = "\n  ".join(problems)
    if strict:
        raise HeadShapeMismatch(
            f"Checkpoint {source} does not fit the model's heads, which follow the "
            f"categories{origin}:\n  {listing}\nEvaluating it would use untrained heads. "
            "Use a checkpoint trained on these categories (or evaluate on the dataset it was "
            "trained on); if the class counts are wrong, set the config key shown."
        )
    logger.warning(
        f"Checkpoint {source} was trained for other classes than the model's heads "
        f"(categories{origin}):\n  {listing}\nThese heads start from random weights and "
        "learn the new categories, as expected when fine-tuning on another dataset; if not "
        "intended, set MODEL.WEIGHTS to a checkpoint trained on these categories."
    )
    return problems


def load_weights(
    model: torch.nn.Module,
    path: str,
    *,
    purpose: str,
    allow_partial: bool = False,
    dataset: str = "",
    trust_file: bool = False,
) -> WeightsReport:
    """Load ``path`` into ``model`` for ``purpose`` (words for the messages: "evaluation",
    "the demo", ...).

    Errors (:class:`WeightsError`, naming the file): an empty path unless ``allow_partial``
    (training from scratch), an unreadable file, a file with no tensor of this model, and,
    without ``allow_partial``, any model tensor the file lacks or holds in another shape
    (heads for other classes are named with their class counts). ``allow_partial`` is for
    fine-tuning (e.g. COCO weights for another class count): mismatching tensors start from
    random weights, logged as a partial load. ``trust_file`` (from
    :func:`trust_weights_file`) unpickles the file in full, see :func:`read_checkpoint`.
    """
    model = getattr(model, "module", model)
    if not path:
        return _no_weights(model, purpose, allow_partial)
    checkpoint = read_checkpoint(path, trust_file=trust_file)
    check_head_shapes(model, checkpoint["model"], strict=not allow_partial, dataset=dataset,
                      source=path)
    theirs = [str(k) for k in checkpoint["model"]]
    ours = model.state_dict()
    state = _matched_state(checkpoint, ours, path)
    shapes = _pop_wrong_shapes(state, ours)
    # `state` is what reaches the model; torch's missing_keys would undercount (FrozenBN fills
    # in absent statistics silently), so the report counts from it.
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    report = _report(model, path, ours, set(state), shapes, unexpected)
    if report.loaded == 0:
        raise _foreign(path, theirs, list(ours))
    _check_fit(report, purpose, allow_partial)
    return report


def _foreign(path: str, theirs: list[str], ours: list[str]) -> WeightsError:
    """The error for a file with no tensor of this model: both sides' names, so the mix-up
    (another architecture, a state nested under another key) shows."""
    return WeightsError(
        f"weights {path} hold no tensor of this model (the file has {len(theirs)}: "
        f"{_listing(theirs, 5) or 'none'}; the model expects e.g. {_listing(ours, 3)}). "
        "Pass a checkpoint of this architecture as MODEL.WEIGHTS"
    )


def _no_weights(model: torch.nn.Module, purpose: str, allow_partial: bool) -> WeightsReport:
    """An empty MODEL.WEIGHTS: random weights are fine for training only."""
    if allow_partial:
        logger.info(f"MODEL.WEIGHTS is empty: {purpose} starts from random weights")
        return WeightsReport(path="", total=len(model.state_dict()))
    raise WeightsError(
        f"MODEL.WEIGHTS is empty: {purpose} needs trained weights, or its results come "
        "from a random network. Pass MODEL.WEIGHTS /path/to/model_final.pth"
    )


def _matched_state(checkpoint: Mapping[str, Any], ours: Mapping[str, torch.Tensor],
                   path: str) -> dict[str, torch.Tensor]:
    """The file's tensors under the model's names, as Detectron2's checkpointer matches them:
    by its name heuristics where the file asks (model-zoo and Caffe2 files,
    ``?matching_heuristics=True``), and without a DDP ``module.`` prefix."""
    state = {}
    for key, value in checkpoint["model"].items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(value)
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"weights {path}: {key} holds a {type(value).__name__}, not a "
                               "tensor or array")
        state[key] = value
    if checkpoint.get("matching_heuristics", False):
        state = align_and_update_state_dicts(
            ours, state, c2_conversion=checkpoint.get("__author__") == "Caffe2")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _pop_wrong_shapes(state: dict[str, torch.Tensor],
                      ours: Mapping[str, torch.Tensor]) -> list[tuple[str, tuple, tuple]]:
    """Remove from ``state`` the tensors whose shape differs from the model's (torch would
    refuse the whole load); returns them as (name, file shape, model shape)."""
    wrong = []
    for key in [k for k in state if k in ours]:
        if isinstance(ours[key], torch.nn.parameter.UninitializedParameter):
            continue  # a lazy module takes any shape
        theirs, mine = tuple(state[key].shape), tuple(ours[key].shape)
        if theirs != mine:
            wrong.append((key, theirs, mine))
            del state[key]
    return wrong


def _report(model: torch.nn.Module, path: str, ours: Mapping[str, torch.Tensor],
            given: set[str], shapes: list[tuple[str, tuple, tuple]],
            unexpected: list[str]) -> WeightsReport:
    """What the load did, counting the tensors that reached the model (``given``)."""
    wrong = {k for k, _, _ in shapes}
    # Tensors only training uses (learned loss weights) may be absent from a file made
    # without them (Detectron2's, a "fixed" run's): they keep their start values.
    optional = tuple(getattr(model, "training_only_prefixes", lambda: ())())
    absent_optional = [k for k in ours if k not in given and optional and k.startswith(optional)]
    if absent_optional:
        logger.info(f"{path} has no {_listing(absent_optional)} (training-only tensors); "
                    "they keep their start values")
    return WeightsReport(
        path=path, loaded=len(set(ours) & given), total=len(ours) - len(absent_optional),
        missing=[k for k in ours if k not in given and k not in wrong
                 and k not in absent_optional],
        # Old Detectron2 files hold anchors that are now non-persistent buffers.
        unexpected=[k for k in unexpected if "anchor_generator.cell_anchors" not in k],
        incorrect_shapes=shapes,
    )


def _check_fit(report: WeightsReport, purpose: str, allow_partial: bool) -> None:
    """A partial load is an error for ``purpose`` unless ``allow_partial`` (fine-tuning),
    then a warning naming what starts from random weights."""
    path, shapes = report.path, report.incorrect_shapes
    if not report.partial:
        logger.info(f"Loaded all {report.total} tensors of the model from {path} ({purpose})")
        return
    details = [f"{k}: file {a}, model {b}" for k, a, b in shapes]
    if report.missing:
        details.append(f"not in the file: {_listing(report.missing)}")
    text = "\n  ".join(details)
    if not allow_partial:
        raise WeightsError(
            f"weights {path} do not fit the model for {purpose}: {report.total - report.loaded}"
            f" of {report.total} tensors would stay random:\n  {text}\nPass a checkpoint "
            "trained with this config (same classes and architecture) as MODEL.WEIGHTS"
        )
    logger.warning(
        f"Partial load for {purpose}: {report.loaded} of {report.total} tensors from {path}; "
        f"the other {report.total - report.loaded} start from random weights:\n  {text}"
    )
