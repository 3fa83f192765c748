"""Learned task balancing (``MODEL.PANOPTIC_EXT.LOSS_BALANCING "uncertainty"``).

Kendall, Gal and Cipolla (CVPR 2018) weight each task by its learned homoscedastic
uncertainty. Per group g of loss terms, with a learned log-variance s_g:

    L = sum_g ( exp(-s_g) * L_g + s_g ),   L_g = the sum of the group's (fixed-weighted) terms

Convention: every group is treated alike, with no 1/2 factors (the paper has 1/(2 sigma^2)
for regression and 1/sigma^2 for classification terms, plus log sigma). Our groups mix both
kinds (the instance group holds box regression and classification), and uniform factors only
rescale every group by the same constant, so they are left out: the equilibrium of group g is
exp(-s_g) = 1 / L_g, each group then contributing about 1 to the loss.

How it combines with the fixed weights (``MODEL.SEM_SEG_HEAD.LOSS_WEIGHT``,
``MODEL.PANOPTIC_FPN.INSTANCE_LOSS_WEIGHT``, ``MODEL.PANOPTIC_EXT.LOSS_WEIGHTS``, the heads'
own): they are applied first, the learned factor exp(-s_g) multiplies the result. With s_g
starting at 0, training starts exactly at the fixed weights; the fixed weights within a group
keep the terms' ratios, while the balance between groups is learned (at equilibrium a fixed
factor on a whole group only shifts its s_g by its logarithm).

The log-variances are parameters of the model: saved in checkpoints, averaged by DDP,
optimized with the rest (without weight decay: see ``Trainer.build_optimizer``). Each step the
effective weight of every term (fixed x learned) goes to metrics.json as ``loss_weight/<term>``;
the regularisers s_g appear as loss terms ``loss_balancing_<group>`` (so ``total_loss`` can be
negative once a task's loss is small).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from detectron2.utils.events import get_event_storage
from torch import nn

__all__ = ["BALANCING_GROUPS", "BALANCING_MODES", "LossBalancer", "balancing_setting",
           "build_loss_balancer", "check_resumed_balancing"]

logger = logging.getLogger(__name__)

BALANCING_MODES = ("fixed", "uncertainty")
BALANCING_GROUPS = ("task", "term")
SEMANTIC_TERMS = ("loss_sem_seg",)
INSTANCE_TERMS = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask")
_PREFIX = "log_var_"


class LossBalancer(nn.Module):
    """One learned log-variance per group; ``forward`` reweights a loss dict.

    ``groups`` maps each group name to its loss terms; a term of no group is an error at the
    first step (it would silently escape the balancing).
    """

    def __init__(self, groups: Mapping[str, Sequence[str]]):
        super().__init__()
        self.group_of = {term: g for g, terms in groups.items() for term in terms}
        self.groups = tuple(groups)
        for g in self.groups:
            # The parameter's own name is unique in the model: the optimizer finds it by name.
            self.register_parameter(_PREFIX + g, nn.Parameter(torch.zeros(())))

    def log_var(self, group: str) -> torch.Tensor:
        return getattr(self, _PREFIX + group)

    def param_names(self) -> list[str]:
        """Local names of the log-variances (no weight decay for them)."""
        return [_PREFIX + g for g in self.groups]

    def factors(self) -> dict[str, float]:
        """The learned factor exp(-s_g) of each group, now."""
        return {g: float(torch.exp(-self.log_var(g).detach())) for g in self.groups}

    def forward(self, losses: Mapping[str, torch.Tensor],
                fixed_weights: Mapping[str, float] | None = None) -> dict[str, torch.Tensor]:
        """``losses`` (already fixed-weighted) times exp(-s_g), plus one regulariser s_g per
        group present; logs the effective weights when an EventStorage is active."""
        unknown = [k for k in losses if k not in self.group_of]
        if unknown:
            raise KeyError(
                f"loss terms {unknown} belong to no MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS "
                f"group ({dict(self.groups_terms())}); use LOSS_BALANCING_GROUPS \"task\" or "
                "LOSS_BALANCING \"fixed\"")
        out: dict[str, torch.Tensor] = {}
        used: dict[str, torch.Tensor] = {}
        for name, value in losses.items():
            g = self.group_of[name]
            s = self.log_var(g)
            used[g] = s
            out[name] = value * torch.exp(-s).to(value.dtype)
        for g, s in used.items():
            out[f"loss_balancing_{g}"] = s
        self._log(losses, fixed_weights or {})
        return out

    def groups_terms(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {g: [] for g in self.groups}
        for term, g in self.group_of.items():
            out[g].append(term)
        return out

    def _log(self, losses: Mapping[str, torch.Tensor], fixed: Mapping[str, float]) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:  # outside a trainer (tests, a plain forward)
            return
        factors = self.factors()
        for name in losses:
            weight = fixed.get(name, 1.0) * factors[self.group_of[name]]
            storage.put_scalar(f"loss_weight/{name}", weight, smoothing_hint=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        absent = [prefix + n for n in self.param_names() if prefix + n not in state_dict]
        if absent:  # a Detectron2 / "fixed" checkpoint: start balanced as the fixed weights
            logger.info(f"Checkpoint has no {', '.join(absent)} (trained without uncertainty "
                        "balancing): those start at 0, i.e. at the fixed loss weights")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def build_loss_balancer(cfg) -> LossBalancer | None:
    """The balancer ``MODEL.PANOPTIC_EXT.LOSS_BALANCING`` asks for (None for "fixed": the
    model and its state dict are then exactly as without this feature)."""
    ext = cfg.MODEL.PANOPTIC_EXT
    mode = str(ext.LOSS_BALANCING).lower()
    if mode not in BALANCING_MODES:
        raise ValueError(f"MODEL.PANOPTIC_EXT.LOSS_BALANCING={ext.LOSS_BALANCING!r}; expected "
                         f"one of {list(BALANCING_MODES)}")
    grouping = str(ext.LOSS_BALANCING_GROUPS).lower()
    if grouping not in BALANCING_GROUPS:
        raise ValueError(f"MODEL.PANOPTIC_EXT.LOSS_BALANCING_GROUPS={ext.LOSS_BALANCING_GROUPS!r}"
                         f"; expected one of {list(BALANCING_GROUPS)}")
    if mode == "fixed":
        return None
    if grouping == "task":
        return LossBalancer({"semantic": SEMANTIC_TERMS, "instance": INSTANCE_TERMS})
    return LossBalancer({t: (t,) for t in (*SEMANTIC_TERMS, *INSTANCE_TERMS)})


_KEYS = ("LOSS_BALANCING", "LOSS_BALANCING_GROUPS")


def balancing_setting(cfg) -> dict[str, str]:
    """The settings that decide the balancer's parameters (and so the optimizer's groups),
    saved with each checkpoint so a resume can tell which one changed."""
    ext = cfg.MODEL.PANOPTIC_EXT
    setting = {key: str(ext[key]).lower() for key in _KEYS}
    if setting["LOSS_BALANCING"] == "fixed":  # no parameters: the grouping does not matter
        setting.pop("LOSS_BALANCING_GROUPS")
    return setting


def check_resumed_balancing(saved: dict[str, str] | None, current: dict[str, str],
                            checkpoint: str = "the checkpoint") -> None:
    """A resume whose loss balancing differs from the checkpoint's cannot load its optimizer
    state (torch only says a parameter group does not match): name the setting instead."""
    if saved is None or saved == current:
        return
    changed = [f"MODEL.PANOPTIC_EXT.{key} {saved.get(key, '(unused)')!r} in {checkpoint}, "
               f"{current.get(key, '(unused)')!r} now" for key in _KEYS
               if saved.get(key) != current.get(key)]
    raise ValueError(
        f"Cannot resume: {'; '.join(changed)}. The optimizer state saved with other loss "
        "weights does not fit. Resume with the checkpoint's setting, or start a new run "
        "(another OUTPUT_DIR) from these weights with MODEL.WEIGHTS and this setting")
