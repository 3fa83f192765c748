"""The per-iteration training step: optional autocast (bf16 on CPU too) and a loss check that
names the failing term before anything is applied."""

import math
import time

import torch
from detectron2.config import CfgNode
from detectron2.engine import SimpleTrainer

from ..modeling.precision import resolve_precision

__all__ = ["PanopticTrainLoop", "autocast_dtype_for", "parse_dtype"]

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16}


def parse_dtype(name: str, key: str) -> torch.dtype:
    """Config string -> torch dtype, with an error naming the key."""
    try:
        return _DTYPES[name.lower()]
    except KeyError as e:
        raise ValueError(f"{key}={name!r}; expected one of {sorted(_DTYPES)}") from e


def autocast_dtype_for(cfg: CfgNode) -> torch.dtype | None:
    """SOLVER.AMP's autocast dtype on MODEL.DEVICE (None: fp32), by the one precision rule: bf16
    only where the hardware has it (see `modeling/precision.py`)."""
    if not cfg.SOLVER.AMP.ENABLED:
        return None
    dtype = parse_dtype(cfg.SOLVER.AMP.DTYPE, "SOLVER.AMP.DTYPE")
    device_type = torch.device(cfg.MODEL.DEVICE).type
    name = "bf16" if dtype == torch.bfloat16 else "fp16"
    if device_type == "cpu" and name == "fp16":
        raise ValueError("SOLVER.AMP.DTYPE 'float16' needs CUDA; use 'bfloat16' on CPU, or "
                         "SOLVER.AMP.ENABLED False")
    chosen = resolve_precision(name, device_type, cfg.MODEL.PANOPTIC_EXT.EMULATED_BF16,
                               key="SOLVER.AMP.ENABLED")
    return None if chosen == "fp32" else dtype


class PanopticTrainLoop(SimpleTrainer):
    """SimpleTrainer with `torch.autocast` around the forward pass when `autocast_dtype` is set
    (bf16 keeps fp32's exponent range, so no grad scaler is needed; fp16 on CUDA uses one).

    A non-finite loss raises FloatingPointError naming the iteration and the terms, before the
    backward pass, so no NaN reaches the weights, the optimizer or a checkpoint.
    """

    def __init__(self, model, data_loader, optimizer, *, device_type: str = "cpu",
                 autocast_dtype: torch.dtype | None = None, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.device_type = device_type
        self.autocast_dtype = autocast_dtype
        self.grad_scaler = None
        if autocast_dtype == torch.float16:
            self.grad_scaler = torch.amp.GradScaler(device_type)

    def run_step(self) -> None:
        assert self.model.training, "[PanopticTrainLoop] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype or
                            torch.bfloat16, enabled=self.autocast_dtype is not None):
            loss_dict = self.model(data)
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        self._check_finite(loss_dict)
        losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time,
                                            iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        if self.grad_scaler is not None:
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            self.optimizer.step()

    def _check_finite(self, loss_dict: dict) -> None:
        values = {k: float(v.detach()) for k, v in loss_dict.items()}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            terms = ", ".join(f"{k}={v}" for k, v in bad.items())
            raise FloatingPointError(
                f"Non-finite loss at iteration {self.iter}: {terms} (all terms: {values}). "
                "Nothing from this step was applied or saved. Try a lower SOLVER.BASE_LR, a "
                "longer SOLVER.WARMUP_ITERS, or SOLVER.CLIP_GRADIENTS.ENABLED True; resume from "
                "the last checkpoint with --resume."
            )

    def state_dict(self) -> dict:
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
