"""Mixed-precision training on CPU (bf16 autocast), where Detectron2's AMPTrainer needs CUDA."""

import time

import torch
from detectron2.engine import SimpleTrainer

__all__ = ["AutocastTrainer", "parse_dtype"]

_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
           "fp16": torch.float16}


def parse_dtype(name: str, key: str) -> torch.dtype:
    """Config string -> torch dtype, with an error naming the key."""
    try:
        return _DTYPES[name.lower()]
    except KeyError as e:
        raise ValueError(f"{key}={name!r}; expected one of {sorted(_DTYPES)}") from e


class AutocastTrainer(SimpleTrainer):
    """SimpleTrainer whose forward pass runs under `torch.autocast` (no grad scaler: bf16 keeps
    fp32's exponent range). Losses are summed in fp32; weights and optimizer stay fp32."""

    def __init__(self, model, data_loader, optimizer, device_type: str = "cpu",
                 dtype: torch.dtype = torch.bfloat16, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.device_type = device_type
        self.dtype = dtype

    def run_step(self) -> None:
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            loss_dict = self.model(data)
        loss_dict = {k: v.float() for k, v in loss_dict.items()}
        losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time,
                                            iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
