"""Schedules in epochs: ``SOLVER.EPOCHS`` and its ``*_EPOCHS`` twins become Detectron2's
iteration keys once, at setup, from the size of the training set the loader really uses
(after Detectron2's filtering) and the total batch ``SOLVER.IMS_PER_BATCH``.

The rule, with ``SOLVER.EPOCHS > 0`` (and ``SOLVER.MAX_ITER 0``):

- ``MAX_ITER`` = ceil(EPOCHS x images / batch) (at least that many epochs);
- each twin that is set replaces its iteration key: ``SOLVER.STEPS_EPOCHS`` -> ``SOLVER.STEPS``
  (the nearest iteration), ``SOLVER.WARMUP_EPOCHS`` -> ``SOLVER.WARMUP_ITERS``,
  ``SOLVER.CHECKPOINT_PERIOD_EPOCHS`` -> ``SOLVER.CHECKPOINT_PERIOD``,
  ``TEST.EVAL_PERIOD_EPOCHS`` -> ``TEST.EVAL_PERIOD`` (these three rounded up); a twin left
  at 0 keeps its iteration key as it is;
- ``SOLVER.STEPS`` without ``STEPS_EPOCHS``: the decays keep their place in the schedule, the
  same fraction of training as in the YAML's own ``MAX_ITER`` (so ``SOLVER.MAX_ITER 0
  SOLVER.EPOCHS 12`` on the command line switches any config); with no such ``MAX_ITER`` it is
  an error naming both keys.

The result is written into the config (``config.yaml``), with ``SOLVER.EPOCHS`` kept and
``SOLVER.EPOCHS_RESOLVED`` saying "N epochs = M iterations at batch B over K images": such a
config is already resolved and is used as it is (no dataset read), so a resume and
``REFERENCE_WORLD_SIZE`` rescaling (applied afterwards, to iterations) stay exact.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence

from detectron2.config import CfgNode

from ..data.loader import train_dataset_dicts  # the dicts the training loader uses (filtered)

__all__ = ["check_epoch_keys", "check_schedule", "epochs_to_iterations", "resolve_epochs",
           "saved_resolution"]

logger = logging.getLogger(__name__)

# (twin in epochs, Detectron2's key in iterations, smallest iteration value when set)
_TWINS = (("SOLVER.WARMUP_EPOCHS", "SOLVER.WARMUP_ITERS", 1),
          ("SOLVER.CHECKPOINT_PERIOD_EPOCHS", "SOLVER.CHECKPOINT_PERIOD", 1),
          ("TEST.EVAL_PERIOD_EPOCHS", "TEST.EVAL_PERIOD", 1))
_RESOLVED = re.compile(r"^(\d+) epochs? = (\d+) iterations at batch (\d+) over (\d+) images$")


def _get(cfg: CfgNode, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg: CfgNode, key: str, value) -> None:
    *path, last = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[last] = value


def epochs_to_iterations(epochs: float, images: int, batch: int) -> int:
    """Iterations that show ``epochs`` passes over ``images`` at total batch ``batch``
    (rounded up: at least that many epochs)."""
    return math.ceil(round(epochs * images / batch, 6))


def _describe(epochs: int, iterations: int, batch: int, images: int) -> str:
    return (f"{epochs} epoch{'s' * (epochs != 1)} = {iterations} iterations at batch {batch} "
            f"over {images} images")


def check_epoch_keys(cfg: CfgNode, yaml_max_iter: int | None = None) -> list[str]:
    """Check the epoch keys of a mutable ``cfg`` (no dataset needed); with ``SOLVER.STEPS``
    in iterations and no ``STEPS_EPOCHS``, set ``STEPS_EPOCHS`` to the same fractions of the
    YAML's ``MAX_ITER`` (``yaml_max_iter``: before the command line set it to 0).

    Returns notes of what it changed, for the log. Errors name the keys.
    """
    s = cfg.SOLVER
    epochs = s.EPOCHS
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"SOLVER.EPOCHS must be a whole number >= 0 (0 = schedule in "
                         f"iterations), got {epochs!r}")
    for twin, _, _ in _TWINS:
        if _get(cfg, twin) < 0:
            raise ValueError(f"{twin} must be >= 0 (0 = use the iteration key), got "
                             f"{_get(cfg, twin)!r}")
    if epochs == 0:
        return []
    notes = []
    if s.EPOCHS_RESOLVED and s.MAX_ITER == 0:  # a run's config.yaml, to convert again
        notes.append(f"SOLVER.MAX_ITER 0: converting SOLVER.EPOCHS again (was "
                     f"{s.EPOCHS_RESOLVED})")
        s.EPOCHS_RESOLVED = ""
    if s.EPOCHS_RESOLVED:
        return notes  # checked against its own record by resolve_epochs
    if s.MAX_ITER != 0:
        raise ValueError(
            f"SOLVER.EPOCHS {epochs} and SOLVER.MAX_ITER {s.MAX_ITER} are both set: a schedule "
            "is in epochs or in iterations. Pass SOLVER.MAX_ITER 0 to train in epochs, or "
            "SOLVER.EPOCHS 0 to train in iterations"
        )
    steps = tuple(s.STEPS_EPOCHS)
    if any(not isinstance(x, int | float) for x in steps) or list(steps) != sorted(steps) \
            or any(x <= 0 or x > epochs for x in steps):
        raise ValueError(f"SOLVER.STEPS_EPOCHS {steps} must be increasing epochs in (0, "
                         f"SOLVER.EPOCHS={epochs}]")
    if steps or not s.STEPS:
        return notes
    if not yaml_max_iter:
        raise ValueError(
            f"SOLVER.STEPS {tuple(s.STEPS)} are iterations, but SOLVER.EPOCHS {epochs} sets the "
            "length and no SOLVER.MAX_ITER says what they are a fraction of. Give the LR "
            "decays in epochs with SOLVER.STEPS_EPOCHS (e.g. \"(8, 11)\"), or SOLVER.STEPS "
            "\"()\" for none"
        )
    s.STEPS_EPOCHS = tuple(round(x / yaml_max_iter * epochs, 4) for x in s.STEPS)
    return [*notes, f"SOLVER.STEPS {tuple(s.STEPS)} of SOLVER.MAX_ITER {yaml_max_iter} kept as "
            f"the same fractions of SOLVER.EPOCHS {epochs}: SOLVER.STEPS_EPOCHS {s.STEPS_EPOCHS}"]


def _converted(cfg: CfgNode, images: int) -> dict[str, object]:
    """The iteration keys ``cfg``'s epoch keys give over ``images`` images."""
    batch = cfg.SOLVER.IMS_PER_BATCH
    out: dict[str, object] = {
        "SOLVER.MAX_ITER": epochs_to_iterations(cfg.SOLVER.EPOCHS, images, batch)}
    if cfg.SOLVER.STEPS_EPOCHS:
        out["SOLVER.STEPS"] = tuple(max(1, round(x * images / batch))  # the nearest
                                    for x in cfg.SOLVER.STEPS_EPOCHS)
    for twin, key, least in _TWINS:
        value = _get(cfg, twin)
        if value > 0:
            out[key] = max(least, epochs_to_iterations(value, images, batch))
    return out


def saved_resolution(output_dir: str) -> int | None:
    """The image count an earlier run in ``output_dir`` converted its epochs over (its
    ``config.yaml``'s ``SOLVER.EPOCHS_RESOLVED``), or None."""
    path = os.path.join(output_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    try:
        saved = CfgNode.load_yaml_with_base(path, allow_unsafe=False)
    except Exception as exc:  # an unreadable config.yaml: the run will rewrite it
        logger.warning(f"Could not read {path} ({exc}); converting epochs anew")
        return None
    match = _RESOLVED.match(str(saved.get("SOLVER", {}).get("EPOCHS_RESOLVED", "")))
    return int(match.group(4)) if match else None


def resolve_epochs(cfg: CfgNode, images: int | None = None,
                   train_dicts: Sequence | None = None) -> CfgNode:
    """``cfg`` with its epoch keys converted to iterations (a new config, frozen if ``cfg``
    was; ``cfg`` itself when ``SOLVER.EPOCHS`` is 0 or it is already resolved).

    ``images``: the training set's size to use (a resumed run's, see
    :func:`saved_resolution`); default: the size of ``train_dicts``, default the dicts the
    training loader builds (Detectron2's filtering included).
    """
    if cfg.SOLVER.EPOCHS == 0:
        return cfg
    if cfg.SOLVER.EPOCHS_RESOLVED and cfg.SOLVER.MAX_ITER != 0:
        _check_resolved(cfg)
        return cfg
    cfg = cfg.clone()
    frozen = cfg.is_frozen()
    cfg.defrost()
    for note in check_epoch_keys(cfg):
        logger.info(note)
    if images is None:
        if train_dicts is None:
            train_dicts = train_dataset_dicts(cfg)
        images = len(train_dicts)
    if images <= 0:
        raise ValueError(f"DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)} has no image left after "
                         "filtering: SOLVER.EPOCHS cannot be converted to iterations")
    for key, value in _converted(cfg, images).items():
        _set(cfg, key, value)
    cfg.SOLVER.EPOCHS_RESOLVED = _describe(cfg.SOLVER.EPOCHS, cfg.SOLVER.MAX_ITER,
                                           cfg.SOLVER.IMS_PER_BATCH, images)
    logger.info(f"{cfg.SOLVER.EPOCHS_RESOLVED}: SOLVER.STEPS {tuple(cfg.SOLVER.STEPS)}, "
                f"SOLVER.WARMUP_ITERS {cfg.SOLVER.WARMUP_ITERS}, SOLVER.CHECKPOINT_PERIOD "
                f"{cfg.SOLVER.CHECKPOINT_PERIOD}, TEST.EVAL_PERIOD {cfg.TEST.EVAL_PERIOD}")
    if frozen:
        cfg.freeze()
    return cfg


def _check_resolved(cfg: CfgNode) -> None:
    """A resolved config (a run's config.yaml) must still be what its record says: changing
    ``SOLVER.EPOCHS``, a twin or the batch on it is an error, not a silent mismatch."""
    match = _RESOLVED.match(cfg.SOLVER.EPOCHS_RESOLVED)
    if not match:
        raise ValueError(f"SOLVER.EPOCHS_RESOLVED {cfg.SOLVER.EPOCHS_RESOLVED!r} is not a record "
                         "this code wrote; pass SOLVER.MAX_ITER 0 to convert SOLVER.EPOCHS "
                         "again")
    epochs, _, batch, images = (int(x) for x in match.groups())
    expected = _converted(cfg, images)
    wrong = [k for k, v in expected.items() if _get(cfg, k) != v]
    if epochs != cfg.SOLVER.EPOCHS or batch != cfg.SOLVER.IMS_PER_BATCH or wrong:
        raise ValueError(
            f"This config's schedule was converted from epochs ({cfg.SOLVER.EPOCHS_RESOLVED}), "
            f"but SOLVER.EPOCHS {cfg.SOLVER.EPOCHS}, SOLVER.IMS_PER_BATCH "
            f"{cfg.SOLVER.IMS_PER_BATCH} or {', '.join(wrong) or 'an *_EPOCHS key'} no longer "
            "match it. Pass SOLVER.MAX_ITER 0 to convert the epochs again"
        )


def check_schedule(cfg: CfgNode) -> None:
    """Checks of a resolved schedule (iterations) before Detectron2 rescales and runs it.

    A total batch ``SOLVER.IMS_PER_BATCH`` that ``SOLVER.REFERENCE_WORLD_SIZE`` does not divide
    (an override on a recipe written for 8 processes) is an error naming both keys (Detectron2
    only asserts); a warm-up as long as training is warned about (the LR never reaches
    ``SOLVER.BASE_LR``).
    """
    s = cfg.SOLVER
    if s.REFERENCE_WORLD_SIZE and s.IMS_PER_BATCH % s.REFERENCE_WORLD_SIZE:
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH {s.IMS_PER_BATCH} is not a multiple of "
            f"SOLVER.REFERENCE_WORLD_SIZE {s.REFERENCE_WORLD_SIZE}: the config was written for "
            f"{s.REFERENCE_WORLD_SIZE} processes and its batch, LR and schedule are rescaled "
            "to the processes of this run from that count. Pass SOLVER.REFERENCE_WORLD_SIZE 0 "
            "to use your SOLVER.IMS_PER_BATCH (and LR, schedule) as given, or a batch that "
            f"is a multiple of {s.REFERENCE_WORLD_SIZE}")
    if s.WARMUP_ITERS >= s.MAX_ITER > 0 and s.WARMUP_FACTOR < 1.0:
        keys = ("SOLVER.WARMUP_EPOCHS and SOLVER.EPOCHS" if s.EPOCHS and s.WARMUP_EPOCHS
                else "SOLVER.WARMUP_ITERS and SOLVER.MAX_ITER")
        logger.warning(
            f"The warm-up ({keys}: {s.WARMUP_ITERS} of {s.MAX_ITER} iterations) lasts the "
            "whole training: the LR never reaches SOLVER.BASE_LR. Shorten the warm-up or "
            "train longer")
